"""What a surface is in NSD (and HD95): the track setting, in a module light enough for command-line
parsers and track specs to import without the metrics' numerical dependencies (see
``harness.scoring.metrics`` for the definitions themselves)."""

from enum import StrEnum


class NsdDefinition(StrEnum):
    """What a surface is in NSD (see the module docstring)."""

    SUBVOXEL = "subvoxel"  # area-weighted surfels on the voxel-corner grid: the publication's
    VOXEL = "voxel"  # edge voxels, each counting 1: MONAI's default


#: The publication's definition, so that NSD on the board is comparable with published NSD.
DEFAULT_NSD_DEFINITION = NsdDefinition.SUBVOXEL
