"""Maintainer commands keep their word: only baselines whose scheme fits the track are queued, a
model imported under a slug is found by it (never registered twice), and an unknown method name
is an error naming the known ones."""

import shutil
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from leaderboard_fixtures import site_storage

from harness.entry.baseline import baselines_for
from harness.track.spec import TrackSpec
from leaderboard.submissions.models import Submission
from leaderboard.tracks.models import ReferenceModel, Track

__all__ = ["site_storage"]


@pytest.mark.parametrize(
    ("abits", "offered"), [(None, False), (4, True)], ids=["weight-only", "w4a4"]
)
def test_smoothquant_is_a_baseline_only_where_activations_are_quantized(abits, offered):
    spec = TrackSpec(Path("m"), Path("d"), weight_bits=4, activation_bits=abits)
    methods = {baseline.method for baseline in baselines_for(spec)}
    assert ("smoothquant" in methods) is offered
    assert {"rtn", "gptq", "comq", "permutation-comq"} <= methods


@pytest.fixture
def registered(db, tiny_track, site_storage) -> Path:
    """The tiny phantom dataset registered as ``phantoms``; the tiny model's folder, not yet."""
    dataset_dir, shared_model_dir = tiny_track
    call_command("import_dataset", str(dataset_dir), "--slug", "phantoms")
    return Path(shutil.copytree(shared_model_dir, site_storage / "model"))


def test_a_weight_only_track_queues_no_baseline_that_can_only_fail(
    registered, django_capture_on_commit_callbacks
):
    call_command("create_track", "--dataset", "phantoms", "--model", str(registered),
                 "--wbits", "4")  # fmt: skip
    track = Track.objects.get()
    with django_capture_on_commit_callbacks():
        call_command("run_baselines", track.slug)
    methods = set(Submission.objects.values_list("reference_method", flat=True))
    assert "smoothquant" not in methods and "gptq" in methods


def test_a_model_registered_under_a_slug_is_found_by_it_and_never_registered_twice(registered):
    from leaderboard.tracks.seeding import import_model

    import_model(registered, slug="maint-unet")
    call_command("create_track", "--dataset", "phantoms", "--model", str(registered),
                 "--wbits", "8", "--abits", "8")  # fmt: skip
    call_command("create_track", "--dataset", "phantoms", "--model", "maint-unet",
                 "--wbits", "4", "--abits", "4")  # fmt: skip
    assert list(ReferenceModel.objects.values_list("slug", flat=True)) == ["maint-unet"]
    assert {t.reference_model.slug for t in Track.objects.all()} == {"maint-unet"}
    assert Track.objects.count() == 2


def test_an_unknown_method_name_is_an_error_naming_the_known_ones(registered):
    call_command("create_track", "--dataset", "phantoms", "--model", str(registered),
                 "--wbits", "4", "--abits", "4")  # fmt: skip
    track = Track.objects.get()
    with pytest.raises(CommandError, match="unknown method.s. gtpq; known: .*gptq"):
        call_command("run_baselines", track.slug, "--methods", "gtpq")
    assert not Submission.objects.exists()
