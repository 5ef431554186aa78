from pathlib import Path

from django.core.management.base import BaseCommand
from django.utils.text import slugify

from harness.errors import HarnessError
from harness.models.onnx_graph import ONNX_ARCHITECTURE
from leaderboard.submissions.models import Kind
from leaderboard.submissions.pipeline import EVALUATED_KINDS
from leaderboard.tracks.seeding import (
    backend_available,
    create_track,
    export_onnx,
    import_dataset,
    import_model,
    import_model_source,
    queue_track_rows,
)

DEMO_PRECISIONS = ((8, 8), (4, 4))
REAL_INT8_BACKENDS = {"onnxruntime-cpu": 0.3, "openvino-cpu": 0.0}
"""The demo's real-INT8 CPU tracks (W8A8) and their float-MAC allowance: ONNX Runtime's integer
kernels are slower than float ones on thin layers, and keeping them float (the profiled baseline)
takes 29% of the demo UNet's MACs; OpenVINO runs every layer faster in INT8."""


class Command(BaseCommand):
    help = (
        "Register the demo bundle written by `harness demo`: the phantom dataset, each shipped "
        "model at W8A8 and W4A4 (simulated) and, when available, W8A8 on ONNX Runtime CPU and "
        "OpenVINO CPU; the nnU-Net v2 folder and MONAI bundle imported with `import_model` at "
        "W8A8 and W4A4 (simulated), the ONNX graph at W8A8 on those CPU backends; queue their "
        "baselines."
    )

    def add_arguments(self, parser):
        parser.add_argument("--demo", default="demo", help="folder written by `harness demo`")

    def handle(self, *args, demo, **options):
        demo = Path(demo)
        dataset = import_dataset(demo / "dataset", slug="phantom", description=(
            "Deterministic synthetic abdominal CT phantoms (liver, spleen, kidneys, aorta, "
            "vertebra); 16 train / 4 calibration / 8 test cases."
        ))  # fmt: skip
        for model_dir in sorted(p for p in (demo / "models").iterdir() if p.is_dir()):
            model = self._with_onnx(import_model(model_dir))
            tracks = [
                create_track(dataset, model, weight_bits=w, activation_bits=a)
                for w, a in DEMO_PRECISIONS
            ]
            for backend, float_macs in REAL_INT8_BACKENDS.items():
                if backend_available(backend) and Kind.ONNX in EVALUATED_KINDS:
                    tracks.append(
                        create_track(
                            dataset, model, weight_bits=8, activation_bits=8, backend=backend,
                            max_float_mac_fraction=float_macs,
                        )
                    )  # fmt: skip
            self._queue(tracks)
        sources = demo / "sources"
        for source in (
            sorted(p for p in sources.iterdir() if p.is_dir()) if sources.is_dir() else []
        ):
            model = self._with_onnx(
                import_model_source(
                    source, demo / "imported" / source.name, slug=slugify(source.name)
                )
            )
            self.stdout.write(f"imported {source.name} as {model.slug} ({model.architecture})")
            if model.architecture == ONNX_ARCHITECTURE:  # a graph: real-INT8 tracks only
                tracks = [
                    create_track(dataset, model, weight_bits=8, activation_bits=8, backend=b)
                    for b in REAL_INT8_BACKENDS
                    if backend_available(b) and Kind.ONNX in EVALUATED_KINDS
                ]
            else:
                tracks = [
                    create_track(dataset, model, weight_bits=w, activation_bits=a)
                    for w, a in DEMO_PRECISIONS
                ]
            self._queue(tracks)

    def _with_onnx(self, model):
        try:
            export_onnx(model)
        except HarnessError as error:
            self.stderr.write(f"{model.slug}: no ONNX export ({error})")
        return model

    def _queue(self, tracks) -> None:
        for track in tracks:
            queued = queue_track_rows(track)
            self.stdout.write(f"{track.slug}: {len(queued)} baseline(s) queued")
