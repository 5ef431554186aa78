"""NSD definition per track: tracks that existed before keep the voxel count their results were
computed with; new tracks default to the publication's subvoxel definition."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tracks", "0004_track_budget_division"),
    ]

    operations = [
        migrations.AddField(
            model_name="track",
            name="nsd_definition",
            field=models.CharField(
                choices=[
                    (
                        "subvoxel",
                        "surfel area on the voxel-corner grid (Nikolov et al. 2018, "
                        "surface-distance)",
                    ),
                    ("voxel", "edge-voxel count (MONAI's default)"),
                ],
                default="voxel",
                help_text="what a surface is in NSD; subvoxel is the publication's definition",
                max_length=10,
            ),
        ),
        migrations.AlterField(
            model_name="track",
            name="nsd_definition",
            field=models.CharField(
                choices=[
                    (
                        "subvoxel",
                        "surfel area on the voxel-corner grid (Nikolov et al. 2018, "
                        "surface-distance)",
                    ),
                    ("voxel", "edge-voxel count (MONAI's default)"),
                ],
                default="subvoxel",
                help_text="what a surface is in NSD; subvoxel is the publication's definition",
                max_length=10,
            ),
        ),
    ]
