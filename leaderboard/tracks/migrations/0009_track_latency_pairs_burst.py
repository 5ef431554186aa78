from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tracks", "0008_track_ranking_rule_provenance_calibration"),
    ]

    operations = [
        migrations.AddField(
            model_name="track",
            name="latency_pairs",
            field=models.PositiveSmallIntegerField(
                default=15,
                help_text="interleaved FP32/entry pairs of the latency protocol (at least 10)",
            ),
        ),
        migrations.AddField(
            model_name="track",
            name="latency_burst",
            field=models.PositiveSmallIntegerField(
                default=3, help_text="calls per side in each latency pair"
            ),
        ),
    ]
