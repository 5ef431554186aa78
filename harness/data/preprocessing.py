"""Reading NIfTI cases safely and preprocessing them from a spec with MONAI transforms.

Pipeline: orientation (e.g. RAS) → resampling to a target spacing (bilinear for images, nearest
for labels) → intensity window and normalisation. Predictions made in the preprocessed grid are
resampled back onto the original label grid, so metrics are computed in the label's own spacing.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
    SpatialResample,
)

from harness.data.dataset import Case
from harness.errors import DatasetError

Normalisation = Literal["window", "zscore", "dataset_zscore", "minmax", "percentile", "none"]
NORMALISATIONS = ("window", "zscore", "dataset_zscore", "minmax", "percentile", "none")
AFFINE_TOLERANCE_MM = 1e-3
AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


ORIENTATION_REQUIRED = (
    "preprocessing.orientation is required: the axis codes the network was trained in (e.g. "
    '"RAS"), or null to feed the voxel axes as stored. There is no default because a network '
    "that is not orientation-invariant gives wrong results, with no other sign, on volumes "
    "turned into a frame it was not trained in"
)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a raw volume becomes network input.

    ``window`` clips intensities to ``intensity_window`` and maps it linearly to [0, 1];
    ``zscore`` subtracts the volume mean and divides by its standard deviation (after clipping to
    ``intensity_window`` when given); ``minmax`` maps each channel's [min, max] linearly to
    [0, 1]; ``percentile`` maps each channel's [p_low, p_high] percentiles
    (``intensity_percentiles``, in percent, e.g. (0.5, 99.5) as nnU-Net clips CT) linearly to
    [0, 1] and clips outside; ``dataset_zscore`` clips to ``intensity_window`` and maps x to
    (x − ``intensity_mean``) / ``intensity_std`` with statistics fixed for the dataset (nnU-Net's
    CTNormalization, its window the foreground's 0.5 and 99.5 percentiles). Per-volume statistics
    are per channel. ``orientation`` None keeps the voxel axes as stored (no reorientation).
    """

    orientation: str | None = "RAS"
    spacing: tuple[float, float, float] | None = None
    intensity_window: tuple[float, float] | None = None
    normalisation: Normalisation = "window"
    intensity_percentiles: tuple[float, float] | None = None
    intensity_mean: float | None = None
    intensity_std: float | None = None

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"unknown normalisation {self.normalisation!r} "
                f"(expected one of: {', '.join(NORMALISATIONS)})"
            )
        if self.normalisation in ("window", "dataset_zscore") and self.intensity_window is None:
            raise ValueError(
                f"normalisation {self.normalisation!r} needs intensity_window (low, high)"
            )
        statistics = (self.intensity_mean, self.intensity_std)
        if (self.normalisation == "dataset_zscore") != (statistics != (None, None)):
            raise ValueError(
                "normalisation 'dataset_zscore' needs intensity_mean and intensity_std, and only "
                "it takes them"
            )
        if self.intensity_std is not None and not self.intensity_std > 0:
            raise ValueError(f"intensity_std must be positive, got {self.intensity_std}")
        percentiles = self.intensity_percentiles
        if (self.normalisation == "percentile") != (percentiles is not None):
            raise ValueError(
                "normalisation 'percentile' needs intensity_percentiles (low, high), and only it "
                "takes them"
            )
        if percentiles is not None and (
            len(percentiles) != 2 or not 0.0 <= percentiles[0] < percentiles[1] <= 100.0
        ):
            raise ValueError(
                f"intensity_percentiles must be (low, high) with 0 <= low < high <= 100, got "
                f"{percentiles}"
            )
        if self.intensity_window is not None:
            low, high = self.intensity_window
            if not low < high:
                raise ValueError(
                    f"intensity_window must be (low, high), got {self.intensity_window}"
                )
        if self.spacing is not None and (
            len(self.spacing) != 3 or any(s <= 0 for s in self.spacing)
        ):
            raise ValueError(f"spacing must be three positive numbers, got {self.spacing}")

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        """Parse a model.json ``preprocessing`` object; ``orientation`` must be stated (see
        ``ORIENTATION_REQUIRED``)."""
        if "orientation" not in data:
            raise ValueError(ORIENTATION_REQUIRED)
        spacing = data.get("spacing")
        window = data.get("intensity_window")
        percentiles = data.get("intensity_percentiles")
        return cls(
            orientation=data["orientation"],
            spacing=tuple(float(s) for s in spacing) if spacing is not None else None,
            intensity_window=tuple(float(w) for w in window) if window is not None else None,
            normalisation=data.get("normalisation", "window"),
            intensity_percentiles=(
                tuple(float(p) for p in percentiles) if percentiles is not None else None
            ),
            intensity_mean=_optional_float(data.get("intensity_mean")),
            intensity_std=_optional_float(data.get("intensity_std")),
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        for name in ("intensity_percentiles", "intensity_mean", "intensity_std"):
            if data[name] is None:  # specs written before these fields existed stay the same
                del data[name]
        return data


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


@dataclass
class LoadedCase:
    """A case as read from disk: image (C, X, Y, Z) with its affine, label in the same grid."""

    case_id: str
    image: MetaTensor
    label: np.ndarray | None
    spacing: tuple[float, float, float]


def read_nifti(path: Path, what: str, *, raw: bool = False) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Load a NIfTI file and its voxels (decoded once: float32, or the stored dtype if ``raw``),
    turning any corruption into a DatasetError naming the file."""
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj) if raw else img.get_fdata(dtype=np.float32)
    except FileNotFoundError:
        raise DatasetError(f"{what}: missing file {path}") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DatasetError(f"{what}: {path} is truncated or not valid gzip ({err})") from None
    except Exception as err:  # nibabel raises many types for malformed headers and data
        raise DatasetError(f"{what}: {path} is not a readable NIfTI file ({err})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DatasetError(f"{what}: {path} is not NIfTI")
    if img.ndim not in (3, 4):
        raise DatasetError(f"{what}: {path} has {img.ndim} dimensions, expected 3 or 4")
    return img, data


def read_case(
    case: Case, labels: dict[int, str] | None = None, *, with_label: bool = True
) -> LoadedCase:
    """Read and check a case: equal grids for all channels and the label, declared label values."""
    where = f"case {case.case_id}"
    channels: list[np.ndarray] = []
    affine = None
    for path in case.images:
        img, data = read_nifti(path, where)
        vols = [data] if data.ndim == 3 else [data[..., i] for i in range(data.shape[-1])]
        if affine is None:
            affine, shape = img.affine, vols[0].shape
        else:
            _check_same_grid(where, path.name, shape, affine, vols[0].shape, img.affine)
        channels.extend(vols)
    if not all(np.isfinite(c).all() for c in channels):
        raise DatasetError(f"{where}: image contains NaN or infinite values")
    image = MetaTensor(torch.from_numpy(np.stack(channels)), affine=torch.as_tensor(affine))

    label = None
    if with_label:
        if case.label is None:
            raise DatasetError(f"{where}: no label file")
        lab_img, raw = read_nifti(case.label, where, raw=True)
        if lab_img.ndim != 3:
            raise DatasetError(f"{where}: label {case.label.name} must be 3D, got {lab_img.shape}")
        _check_same_grid(where, case.label.name, shape, affine, lab_img.shape, lab_img.affine)
        label = raw.astype(np.int16) if np.issubdtype(raw.dtype, np.integer) else np.rint(raw)
        if not np.issubdtype(raw.dtype, np.integer) and not np.array_equal(label, raw):
            raise DatasetError(f"{where}: label {case.label.name} holds non-integer values")
        label = label.astype(np.int16)
        if labels is not None:
            present = set(np.unique(label).tolist())
            undeclared = sorted(present - set(labels))
            if undeclared:
                raise DatasetError(
                    f"{where}: label values {undeclared} are not declared in dataset.json "
                    f"(declared: {sorted(labels)})"
                )
    zooms = nib.affines.voxel_sizes(affine)
    return LoadedCase(case.case_id, image, label, tuple(float(z) for z in zooms[:3]))


def _check_same_grid(where: str, name: str, shape, affine, other_shape, other_affine) -> None:
    if tuple(other_shape[:3]) != tuple(shape[:3]):
        raise DatasetError(
            f"{where}: {name} has shape {tuple(other_shape[:3])}, image has {tuple(shape[:3])}"
        )
    if not np.allclose(other_affine, affine, atol=AFFINE_TOLERANCE_MM):
        raise DatasetError(
            f"{where}: {name} has a different affine from the image (voxel grids do not "
            f"overlap: spacing {nib.affines.voxel_sizes(other_affine).round(3).tolist()} vs "
            f"{nib.affines.voxel_sizes(affine).round(3).tolist()}, origin "
            f"{np.round(other_affine[:3, 3], 2).tolist()} vs {np.round(affine[:3, 3], 2).tolist()})"
        )


def _transforms(spec: PreprocessSpec, with_label: bool) -> Compose:
    keys = ["image", "label"] if with_label else ["image"]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    steps: list = []
    if spec.orientation is not None:
        steps.append(Orientationd(keys=keys, axcodes=spec.orientation, labels=AXIS_LABELS))
    if spec.spacing is not None:
        steps.append(Spacingd(keys=keys, pixdim=spec.spacing, mode=modes, dtype=np.float32))
    if spec.normalisation == "window":
        low, high = spec.intensity_window
        steps.append(
            ScaleIntensityRanged(
                keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True
            )
        )
    elif spec.normalisation == "zscore":
        if spec.intensity_window is not None:
            low, high = spec.intensity_window
            steps.append(
                ScaleIntensityRanged(
                    keys="image", a_min=low, a_max=high, b_min=low, b_max=high, clip=True
                )
            )
        steps.append(NormalizeIntensityd(keys="image", channel_wise=True))
    elif spec.normalisation == "dataset_zscore":
        low, high = spec.intensity_window
        steps.append(
            ScaleIntensityRanged(
                keys="image", a_min=low, a_max=high, b_min=low, b_max=high, clip=True
            )
        )
        steps.append(
            NormalizeIntensityd(
                keys="image", subtrahend=spec.intensity_mean, divisor=spec.intensity_std
            )
        )
    elif spec.normalisation == "minmax":
        steps.append(ScaleIntensityd(keys="image", minv=0.0, maxv=1.0, channel_wise=True))
    elif spec.normalisation == "percentile":
        low, high = spec.intensity_percentiles
        steps.append(
            ScaleIntensityRangePercentilesd(
                keys="image", lower=low, upper=high, b_min=0.0, b_max=1.0, clip=True,
                channel_wise=True,
            )
        )  # fmt: skip
    return Compose(steps)


def preprocess(case: LoadedCase, spec: PreprocessSpec, *, with_label: bool = False):
    """Network input (C, x, y, z) as a MetaTensor carrying its affine; with the label if asked."""
    data = {"image": case.image.clone()}
    if with_label:
        data["label"] = MetaTensor(
            torch.from_numpy(case.label[None].astype(np.float32)), affine=case.image.affine
        )
    out = _transforms(spec, with_label)(data)
    image = out["image"].float()
    if with_label:
        return image, out["label"][0].round().to(torch.int64)
    return image


def restore_to_original(
    prediction: torch.Tensor, preprocessed: MetaTensor, original: MetaTensor
) -> np.ndarray:
    """Resample a label map (x, y, z) from the preprocessed grid onto the original image grid,
    as the label map metrics are computed on (see ``restore_to_grid``)."""
    return restore_to_grid(
        prediction, preprocessed.affine, original.affine, tuple(original.shape[1:])
    )


def restore_to_grid(
    prediction: torch.Tensor,
    source_affine: torch.Tensor | np.ndarray,
    target_affine: torch.Tensor | np.ndarray,
    target_shape: tuple[int, int, int],
) -> np.ndarray:
    """Resample an integer label map (x, y, z) on ``source_affine``'s grid onto the grid of
    ``target_shape`` voxels at ``target_affine``, as int16: nearest neighbour through both
    affines, j = round(A_src⁻¹ · A_dst · i), border-clamped. Axis-aligned grids (the usual case)
    are an index gather of the labels themselves; any other takes one float32 copy of the map."""
    plain = (
        prediction.as_tensor()
        if isinstance(prediction, MetaTensor)
        else torch.as_tensor(prediction)
    )
    source = np.asarray(source_affine, dtype=np.float64)
    to_moving = np.linalg.inv(source) @ np.asarray(target_affine, dtype=np.float64)
    linear = to_moving[:3, :3]
    if np.count_nonzero(np.abs(linear) > 1e-9 * np.abs(linear).max()) == 3:
        return _gather_axis_aligned(plain.numpy(), to_moving, tuple(target_shape))
    moving = MetaTensor(plain[None].float(), affine=torch.as_tensor(source))
    restored = SpatialResample(mode="nearest", padding_mode="border", dtype=torch.float32)(
        moving, dst_affine=torch.as_tensor(target_affine), spatial_size=target_shape
    )
    return restored.as_tensor()[0].round().to(torch.int16).numpy()


def _gather_axis_aligned(
    moving: np.ndarray, to_moving: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """Nearest-neighbour gather when the grids differ only by axis flips, permutations and
    scaling: every output axis reads one input axis, so three index vectors suffice."""
    source_axes, indices = [0, 0, 0], [None, None, None]
    for out_axis in range(3):
        src = int(np.argmax(np.abs(to_moving[:3, out_axis])))
        coords = to_moving[src, out_axis] * np.arange(shape[out_axis]) + to_moving[src, 3]
        source_axes[out_axis] = src
        indices[out_axis] = np.clip(
            np.floor(coords + 0.5).astype(np.int64), 0, moving.shape[src] - 1
        )
    reordered = np.transpose(moving, source_axes)
    return reordered[np.ix_(*indices)].astype(np.int16)
