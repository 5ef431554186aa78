"""Maintainer commands keep their word: only baselines whose scheme fits the track are queued, a
model imported under a slug is found by it (never registered twice), and an unknown method name
is an error naming the known ones."""

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from leaderboard_fixtures import site_storage
from modelopt_int8 import modelopt_int8

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


def test_create_track_names_a_track_of_long_model_and_dataset_slugs(registered):
    from leaderboard.tracks.seeding import import_model

    import_model(registered, slug="demo-segresnet-onnx-graph")
    call_command("create_track", "--dataset", "phantoms", "--model", "demo-segresnet-onnx-graph",
                 "--wbits", "8", "--abits", "8", "--backend", "onnxruntime-cpu")  # fmt: skip
    slug = Track.objects.get().slug
    assert slug == "demo-segresnet-onnx-graph-phantoms-w8a8-onnxruntime-cpu" and len(slug) > 50


def test_an_unknown_method_name_is_an_error_naming_the_known_ones(registered):
    call_command("create_track", "--dataset", "phantoms", "--model", str(registered),
                 "--wbits", "4", "--abits", "4")  # fmt: skip
    track = Track.objects.get()
    with pytest.raises(CommandError, match="unknown method.s. gtpq; known: .*gptq"):
        call_command("run_baselines", track.slug, "--methods", "gtpq")
    assert not Submission.objects.exists()


def test_create_track_takes_the_settings_the_modelopt_recipe_needs(registered, tmp_path):
    """``create_track`` sets the budget, float-MAC allowance, division, granularities, gate and
    deadline from the command line; the ModelOpt track it makes accepts ModelOpt's real INT8
    file of the demo UNet, which the default settings refuse on its float output conv, and the
    float allowance alone on its bits per weight."""
    from harness.artifacts.onnx.verify import verify_for_track
    from harness.artifacts.precision import check_for_track
    from harness.demo import shipped_models
    from harness.errors import SubmissionError
    from harness.track.loaded import LoadedTrack

    # the trained demo UNet: ModelOpt keeps its output conv float, 19.9% of its MACs (82% of the
    # tiny untrained UNet's, whose output conv dominates)
    unet = shutil.copytree(shipped_models()["unet"], registered.parent / "demo-unet")
    call_command("create_track", "--dataset", "phantoms", "--model", str(unet),
                 "--wbits", "8", "--abits", "8", "--backend", "tensorrt",
                 "--bits-per-weight-budget", "16.1", "--max-float-mac-fraction", "0.2",
                 "--division", "closed", "--granularities", "per-channel",
                 "--accuracy-gate", "0.98", "--closes-at", "2031-03-01T12:00Z")  # fmt: skip
    track = Track.objects.get()
    spec = track.to_spec()
    assert (spec.budget, spec.max_float_mac_fraction, spec.division) == (16.1, 0.2, "closed")
    assert (spec.granularities, spec.accuracy_gate) == (("per-channel",), 0.98)
    assert track.closes_at.isoformat() == "2031-03-01T12:00:00+00:00"

    loaded = LoadedTrack.open(spec)
    batches = [batch.numpy() for batch in loaded.calibration]
    peer = modelopt_int8(loaded.fp32_onnx, batches, "image", tmp_path / "modelopt.onnx")
    checks = loaded.checks()
    verified = verify_for_track(peer, checks)
    check_for_track(verified.precision, checks)
    assert verified.precision["run_time_quantized_weight_layers"]
    default = TrackSpec(spec.model_dir, spec.dataset_dir, backend="tensorrt", weight_bits=8,
                        activation_bits=8)  # fmt: skip
    refusals = [
        (default, "is a float16 initializer.*at most 8-bit weights"),
        (replace(default, max_float_mac_fraction=0.2), r"16.0\d effective bits per weight.*8.50"),
    ]
    for settings, message in refusals:
        checks = loaded.checks(settings)
        with pytest.raises(SubmissionError, match=message):
            check_for_track(verify_for_track(peer, checks).precision, checks)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--division", "half", "invalid choice: 'half'"),
        ("--closes-at", "next week", "expected an ISO 8601 date-time"),
        ("--granularities", ",", "expected NAME"),
    ],
)
def test_create_track_refuses_a_malformed_setting_naming_it(registered, option, value, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_track", "--dataset", "phantoms", "--model", str(registered),
                     "--wbits", "8", option, value)  # fmt: skip
    assert not Track.objects.exists()


def test_create_track_refuses_a_deadline_before_the_phase_opens(registered):
    with pytest.raises(CommandError, match="the deadline must come after the phase opens"):
        call_command("create_track", "--dataset", "phantoms", "--model", str(registered),
                     "--wbits", "8", "--opens-at", "2031-03-01T00:00Z",
                     "--closes-at", "2031-02-01T00:00Z")  # fmt: skip
    assert not Track.objects.exists()
