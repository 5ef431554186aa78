import argparse
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime
from django.utils.timezone import is_naive, make_aware

from harness.backends import backend_names
from harness.cli.common import granularity_list
from harness.errors import HarnessError
from harness.track.spec import DEFAULT_ACCURACY_GATE, DIVISIONS
from leaderboard.tracks.models import Dataset, ReferenceModel
from leaderboard.tracks.seeding import create_track, export_onnx, import_model


class Command(BaseCommand):
    help = "Create a track: a reference model folder on a registered dataset at a precision."

    def add_arguments(self, parser):
        parser.add_argument("--dataset", required=True, help="dataset slug")
        parser.add_argument(
            "--model",
            required=True,
            help="reference model folder, or the slug it was imported under (import_model)",
        )
        parser.add_argument("--wbits", type=int, required=True)
        parser.add_argument("--abits", type=int, help="omit for weight-only")
        parser.add_argument("--backend", default="simulated", choices=backend_names())
        parser.add_argument("--quota", type=int, default=5, help="submissions per user per day")
        parser.add_argument("--hidden", action="store_true")
        parser.add_argument(
            "--label-map",
            type=_label_map,
            default={},
            help="MODEL=DATASET[,MODEL=DATASET...]: which dataset label each model label scores "
            "as, by name, when the two name their organs differently (model labels not named "
            "score as the dataset label of the same name, else as background)",
        )

        parser.add_argument(
            "--bits-per-weight-budget",
            type=float,
            help="most effective bits per weight an entry may store (default: weight bits + "
            "0.5); e.g. 16.1 for ModelOpt's fp16-stored weights",
        )
        parser.add_argument(
            "--division",
            choices=DIVISIONS,
            default=DIVISIONS[0],
            help="closed: post-training quantization only; open: any weights",
        )
        parser.add_argument(
            "--max-float-mac-fraction",
            type=float,
            default=0.0,
            help="share of an ONNX file's weighted-op MACs that may keep float weights",
        )
        parser.add_argument(
            "--granularities",
            type=granularity_list,
            default=(),
            help="comma-separated granularity labels an entry may have (default: any)",
        )
        parser.add_argument(
            "--accuracy-gate",
            type=float,
            default=DEFAULT_ACCURACY_GATE,
            help="an entry passes when its mean DSC is at least this fraction of FP32's",
        )
        parser.add_argument(
            "--cases-per-task",
            type=int,
            default=0,
            help="test cases per Celery task when an upload is scored: its cases are fanned "
            "out over the workers (default 0: one task scores them all)",
        )
        parser.add_argument(
            "--opens-at", type=_moment, help="when the phase opens (ISO 8601; default: now)"
        )
        parser.add_argument(
            "--closes-at",
            type=_moment,
            help="the deadline: submissions close then (ISO 8601, e.g. 2027-03-01T12:00Z; "
            "default: open-ended)",
        )

    def handle(
        self,
        *args,
        dataset,
        model,
        wbits,
        abits,
        backend,
        quota,
        hidden,
        label_map,
        bits_per_weight_budget,
        division,
        max_float_mac_fraction,
        granularities,
        accuracy_gate,
        opens_at,
        closes_at,
        cases_per_task,
        **options,
    ):
        phase = {"opens_at": opens_at} if opens_at is not None else {}
        if cases_per_task < 0:
            raise CommandError(f"--cases-per-task is a count of cases, not {cases_per_task}")
        try:
            reference = _reference_model(model)
            export_onnx(reference)
            track = create_track(
                Dataset.objects.get(slug=dataset),
                reference,
                weight_bits=wbits,
                activation_bits=abits,
                backend=backend,
                daily_quota=quota,
                is_public=not hidden,
                label_map=label_map,
                bits_per_weight_budget=bits_per_weight_budget,
                division=division,
                max_float_mac_fraction=max_float_mac_fraction,
                granularities=list(granularities),
                accuracy_gate=accuracy_gate,
                closes_at=closes_at,
                cases_per_task=cases_per_task,
                **phase,
            )
        except (Dataset.DoesNotExist, HarnessError) as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"track {track.slug}")


def _reference_model(model: str) -> ReferenceModel:
    """The model registered under the slug ``model``, else the folder ``model`` registered."""
    if not Path(model).is_dir():
        found = ReferenceModel.objects.filter(slug=model).first()
        if found is not None:
            return found
    return import_model(Path(model))


def _label_map(text: str) -> dict[str, str]:
    """``liver=Liver,spleen=Spleen`` → {"liver": "Liver", "spleen": "Spleen"}."""
    pairs = [part.split("=") for part in text.split(",") if part.strip()]
    if not pairs or any(len(pair) != 2 or not all(n.strip() for n in pair) for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected MODEL=DATASET[,MODEL=DATASET...], got {text!r}")
    return {model.strip(): dataset.strip() for model, dataset in pairs}


def _moment(text: str):
    """An ISO 8601 date-time (a naive one read in the site's time zone)."""
    moment = parse_datetime(text.replace("Z", "+00:00"))
    if moment is None:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 date-time, got {text!r}")
    return make_aware(moment) if is_naive(moment) else moment
