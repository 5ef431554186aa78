"""Per-case fan-out: the wall seconds of one submission on a clinical-size track evaluated by 1,
2 and 4 Celery pool processes, and whether the three result documents agree case for case.

A live site on the production stack (gunicorn, a Celery worker, Redis and PostgreSQL from
Debian's packages, as the fault suite starts them) serves one track of ``--cases`` test cases of
the clinical phantom (``harness.data.phantoms``, size ``clinical``; ``--coarsen N`` draws the same
field of view on an N× coarser grid, N³ fewer voxels) with one case per Celery task. The
network is the demo UNet architecture with 14 output channels, trained briefly on a training
case (``large_volume.prepare``'s recipe: memory and time are measured, not accuracy); the
artifact is its W8A8 per-channel checkpoint. The FP32 reference run is computed first, in this
process, into the site's shared cache (as the first submission's worker would), so that every
run times the entry's evaluation only. The worker is restarted with ``-c`` 1, 2 and 4 and the
same checkpoint submitted each time; the table prints wall seconds from submitting to ``done``,
the speed-up over one process, the load average, and whether the per-case DSC/NSD/HD95 are
bit-identical to the first run's.

    .venv/bin/python benchmarks/fan_out.py [--cases 8] [--coarsen 1] [--work DIR]

On a machine of C cores the speed-up is bounded by C (and by the cases: one per task); beyond the
cores, more pool processes only share them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

PROCESSES = (1, 2, 4)
PER_CASE_FIELDS = ("case_id", "dsc", "nsd", "hd95")
RESULT_OF = """
import json
from leaderboard.submissions.models import Evaluation
print(json.dumps(Evaluation.objects.get(submission_id={0}).result))
"""


def prepare(work: Path, cases: int, coarsen: int) -> tuple[Path, Path, Path]:
    """(dataset, FP32 model, W8A8 checkpoint) under ``work``: ``cases`` test cases, one
    calibration case and one training case of the clinical phantom; made once and reused."""
    from large_volume import (
        CALIBRATION_BATCHES,
        NETWORK_SEED,
        SCHEME,
        TRAIN_ITERATIONS,
        clinical_unet_spec,
    )

    from harness.artifacts.checkpoint.save import save_checkpoint
    from harness.data import phantoms
    from harness.data.dataset import load_dataset, write_splits
    from harness.data.preprocessing import preprocess, read_case
    from harness.inference.sliding_window import patch_batches
    from harness.models.reference import save_reference_model
    from harness.models.training import TrainConfig, load_training_volumes, train
    from reference_methods.simulator.scheme import QuantConfig, quantize

    dataset_dir, model_dir, ckpt_dir = work / "dataset", work / "fp32", work / "w8a8"
    if (ckpt_dir / "manifest.json").is_file():
        return dataset_dir, model_dir, ckpt_dir
    if coarsen > 1:
        shape, spacing = phantoms.CLINICAL_SHAPE, phantoms.CLINICAL_SPACING_MM
        phantoms.CLINICAL_SHAPE = tuple(n // coarsen for n in shape)
        phantoms.CLINICAL_SPACING_MM = tuple(s * coarsen for s in spacing)
    phantoms.write_phantom_dataset(dataset_dir, cases=cases + 2, seed=0, size="clinical")
    ids = [case.case_id for case in load_dataset(dataset_dir).cases]
    write_splits(dataset_dir, {"train": ids[:1], "calibration": ids[1:2], "test": ids[2:]})
    spec = clinical_unet_spec("fan-out-unet")
    dataset = load_dataset(dataset_dir)
    volumes = load_training_volumes(dataset.split("train"), dataset.labels, spec.preprocessing)
    model = train(spec, volumes, TrainConfig(iterations=TRAIN_ITERATIONS, seed=NETWORK_SEED), False)
    del volumes
    save_reference_model(model, spec, model_dir)
    case = dataset.split("calibration")[0]
    image = preprocess(read_case(case, with_label=False), spec.preprocessing)
    batches = [batch.clone() for _, batch in patch_batches(image, spec.sliding_window)]
    batches = batches[:CALIBRATION_BATCHES]
    save_checkpoint(quantize(model, QuantConfig.from_scheme(SCHEME), batches), ckpt_dir)
    return dataset_dir, model_dir, ckpt_dir


def warm_cache(dataset_dir: Path, model_dir: Path) -> float:
    """The FP32 reference run computed into the shared cache (``MEDQUANT_CACHE_DIR``); seconds."""
    from harness.track.loaded import LoadedTrack
    from harness.track.spec import TrackSpec

    start = time.perf_counter()
    track = LoadedTrack.open(TrackSpec(model_dir, dataset_dir, weight_bits=8, activation_bits=8))
    track.fp32_run  # noqa: B018 -- computed (or read) and cached
    return time.perf_counter() - start


def per_case(result: dict) -> list:
    return [[case.get(field) for field in PER_CASE_FIELDS] for case in result["cases"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=8, help="test cases of the track")
    parser.add_argument("--coarsen", type=int, default=1, help="N× coarser clinical grid")
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench-fan-out")
    args = parser.parse_args()
    from large_volume import cpu_description
    from leaderboard_services import live_site, sign_up_and_create_token, submit

    model, flags = cpu_description()
    print(f"CPU: {model}; flags: {', '.join(flags)}; {os.cpu_count()} cores")
    work = args.work / f"c{args.cases}-x{args.coarsen}"
    dataset_dir, model_dir, ckpt_dir = prepare(work, args.cases, args.coarsen)
    os.environ["MEDQUANT_CACHE_DIR"] = str(work / "cache")
    seconds = warm_cache(dataset_dir, model_dir)
    print(f"FP32 reference run cached in {seconds:.1f} s (load {os.getloadavg()[0]:.2f})")
    var = work / "site"
    shutil.rmtree(var, ignore_errors=True)
    rows, first = [], None
    with live_site(
        dataset_dir, model_dir, var, "redis+postgres", quota=100,
        track_options=("--cases-per-task", "1"),
    ) as site:  # fmt: skip
        _, token = sign_up_and_create_token(site, "bench")
        headers = {"Authorization": f"Token {token}"}
        track = requests.get(f"{site.url}/api/v1/tracks/", headers=headers).json()
        slug = (track["results"] if isinstance(track, dict) else track)[0]["slug"]
        for processes in PROCESSES:
            site.procs[0].terminate()
            site.procs[0].wait(timeout=120)
            site.worker_concurrency = processes
            site.restart_worker()
            time.sleep(5)  # the worker connects and forks its pool
            load_before = os.getloadavg()[0]
            start = time.perf_counter()
            response = submit(site, token, ckpt_dir, f"fan-out-{processes}", track=slug)
            if response.status_code != 201:
                raise SystemExit(f"submission refused: {response.status_code} {response.text}")
            url = f"{site.url}/api/v1/submissions/{response.json()['id']}/"
            while (body := requests.get(url, headers=headers).json())["status"] not in (
                "done", "failed", "rejected"
            ):  # fmt: skip
                time.sleep(0.5)
            wall = time.perf_counter() - start
            if body["status"] != "done":
                raise SystemExit(f"{processes} process(es): {body['status']}: {body.get('error')}")
            output = site.manage("shell", "-c", RESULT_OF.format(body["id"]))
            cases = per_case(json.loads(output.strip().splitlines()[-1]))
            first = first or (wall, cases)
            rows.append((processes, wall, first[0] / wall, cases == first[1], load_before))
    print(f"\n{args.cases} test cases, one per task, clinical phantom coarsened {args.coarsen}×")
    print(f"{'processes':>9} {'wall s':>8} {'speed-up':>8} {'identical':>9} {'load':>5}")
    for processes, wall, speedup, same, load in rows:
        print(f"{processes:>9} {wall:>8.1f} {speedup:>7.2f}× {str(same):>9} {load:>5.2f}")
    if not all(same for *_, same, _ in rows):
        raise SystemExit("the per-case results differ between runs")


if __name__ == "__main__":
    main()
