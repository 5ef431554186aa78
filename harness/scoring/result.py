"""The result JSON (versioned schema in ``result_schema.json``): per case and per class
DSC/NSD/HD95, summary with the relative drop vs FP32 (MedQuanBench's ↓Δ%), bootstrap CI,
environment, timings."""

from __future__ import annotations

import json
import platform
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from harness import __version__
from harness.scoring.evaluation import EvaluationRun
from harness.scoring.splits import DEFAULT_PUBLIC_FRACTION, split_cases

RESULT_SCHEMA = "medquant-result"
RESULT_SCHEMA_VERSION = 4
"""Version 4 adds ``splits`` (the public and private splits of the test cases, see
``harness.scoring.splits``); version 3 added HD95 (mm, per case and class, ``mean_hd95`` in the
summary) on the surfaces of ``track.nsd_definition``; version 2 named the NSD definition;
version 1 used the voxel one."""
SCHEMA_PATH = Path(__file__).with_name("result_schema.json")
BOOTSTRAP_SAMPLES = 2000


def bootstrap_ci(values: list[float], seed: int, samples: int = BOOTSTRAP_SAMPLES) -> list[float]:
    """Percentile bootstrap 95% CI of the mean, resampling cases with replacement."""
    arr = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(samples, len(arr)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(high)]


def paired_bootstrap_ci(
    values: list[float], reference: list[float], seed: int, samples: int = BOOTSTRAP_SAMPLES
) -> list[float]:
    """Percentile bootstrap 95% CI of mean(values − reference) over paired cases: the same
    resampled cases (with replacement) for both sides, so that what the cases share (an easy or
    a hard case) cancels and only the difference between the two is resampled. ``seed`` fixes
    the resamples."""
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired values need equal, non-empty lengths ({a.shape} vs {b.shape})")
    return bootstrap_ci(list(a - b), seed, samples)


def relative_drop_pct(value: float, reference: float) -> float:
    """(reference − value) / reference · 100; positive when ``value`` is worse."""
    return 0.0 if reference == 0 else float((reference - value) / reference * 100.0)


def environment(seed: int) -> dict:
    """Hardware and library versions the numbers were produced with."""
    return {
        "harness_version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_threads": torch.get_num_threads(),
        "libraries": {
            name: version(name)
            for name in ("torch", "monai", "numpy", "nibabel", "safetensors", "onnx", "onnxruntime")
        },
        "seed": seed,
    }


def build_result(
    run: EvaluationRun,
    *,
    labels: dict[int, str],
    track: dict,
    submission: dict,
    fp32: EvaluationRun | None,
    seed: int,
    accuracy_gate: float,
    fp32_size_bytes: int | None = None,
    extra_timings: dict[str, float] | None = None,
    efficiency: dict | None = None,
    warnings: list[str] | None = None,
    public_fraction: float = DEFAULT_PUBLIC_FRACTION,
) -> dict:
    """Assemble the result document; ``fp32`` is the reference run (None when this is it);
    ``accuracy_gate`` is the track's fraction of the FP32 mean DSC an entry must reach;
    ``fp32_size_bytes`` the FP32 reference's size on the track's backend, against which
    ``compression`` reports the entry's size, "× smaller" and effective bits per weight;
    ``efficiency`` holds real-backend latency, size and memory (ONNX submissions); ``warnings``
    what the numbers should be read with (e.g. a receptive field beyond the roi). ``splits``
    holds the case ids, per-class means and summary of the public and private splits of the
    cases (``harness.scoring.splits``, by ``public_fraction`` and ``seed``; an empty split is
    left out)."""
    reference = fp32 or run
    with_hd95 = all(c.hd95 for c in run.cases)
    classes = sorted(c for c in labels if c != 0)
    timings = {k: round(v, 4) for k, v in run.timer.seconds.items()}
    timings["evaluation_wall"] = round(run.wall_seconds, 4)
    timings.update({k: round(v, 4) for k, v in (extra_timings or {}).items()})
    document = {
        "schema": RESULT_SCHEMA,
        "schema_version": RESULT_SCHEMA_VERSION,
        "track": track,
        "submission": submission,
        "classes": {str(c): labels[c] for c in classes},
        "cases": [_case_scores(c) for c in run.cases],
        "case_costs": [
            {
                "case_id": c.case_id,
                "seconds": {k: round(v, 4) for k, v in c.seconds.items()},
                "peak_rss_mb": c.peak_rss_mb,
            }
            for c in run.cases
        ],
        "per_class": _per_class(run, labels),
        "summary": _summary(run, reference, seed, accuracy_gate),
        "environment": environment(seed),
        "timings": timings,
    }
    if with_hd95:
        _add_hd95(document, run, reference, classes)
    document["splits"] = _splits(run, reference, labels, seed, accuracy_gate, public_fraction)
    if efficiency is not None:
        document["efficiency"] = efficiency
    if fp32_size_bytes:
        document["compression"] = _compression(submission.get("precision", {}), fp32_size_bytes)
    if warnings:
        document["warnings"] = list(warnings)
    return document


def _add_hd95(document: dict, run: EvaluationRun, reference: EvaluationRun, classes: list) -> None:
    """HD95 (mm, lower is better) per case and class, per class and in the summary."""
    for case, metrics in zip(document["cases"], run.cases, strict=True):
        case["hd95"] = {str(k): v for k, v in metrics.hd95.items()}
        case["mean_hd95"] = metrics.mean_hd95
    for k in classes:
        document["per_class"][str(k)]["mean_hd95"] = float(np.mean([c.hd95[k] for c in run.cases]))
    summary = document["summary"]
    summary["mean_hd95"] = float(np.mean([c.mean_hd95 for c in run.cases]))
    if all(c.hd95 for c in reference.cases):
        summary["fp32_mean_hd95"] = float(np.mean([c.mean_hd95 for c in reference.cases]))


def _splits(
    run: EvaluationRun,
    reference: EvaluationRun,
    labels: dict[int, str],
    seed: int,
    gate: float,
    public_fraction: float,
) -> dict:
    """Per split: its case ids, per-class means and summary, each as the whole document has
    them over all cases (the FP32 figures over the same cases)."""
    splits = {}
    ids = [c.case_id for c in run.cases]
    for name, chosen in split_cases(ids, public_fraction, seed).items():
        if not chosen:
            continue
        part = replace(run, cases=[c for c in run.cases if c.case_id in chosen])
        base = replace(reference, cases=[c for c in reference.cases if c.case_id in chosen])
        per_class, summary = _per_class(part, labels), _summary(part, base, seed, gate)
        if all(c.hd95 for c in part.cases):
            for k, scores in per_class.items():
                scores["mean_hd95"] = float(np.mean([c.hd95[int(k)] for c in part.cases]))
            summary["mean_hd95"] = float(np.mean([c.mean_hd95 for c in part.cases]))
            if all(c.hd95 for c in base.cases):
                summary["fp32_mean_hd95"] = float(np.mean([c.mean_hd95 for c in base.cases]))
        splits[name] = {"case_ids": chosen, "per_class": per_class, "summary": summary}
    return splits


def _per_class(run: EvaluationRun, labels: dict[int, str]) -> dict:
    """Mean DSC and NSD per foreground class over the run's cases."""
    return {
        str(k): {
            "name": labels[k],
            "mean_dsc": float(np.mean([c.dsc[k] for c in run.cases])),
            "mean_nsd": float(np.mean([c.nsd[k] for c in run.cases])),
        }
        for k in sorted(c for c in labels if c != 0)
    }


def _case_scores(case) -> dict:
    """One case's per-class and mean DSC and NSD, as the document stores them."""
    return {
        "case_id": case.case_id,
        "dsc": {str(k): v for k, v in case.dsc.items()},
        "nsd": {str(k): v for k, v in case.nsd.items()},
        "mean_dsc": case.mean_dsc,
        "mean_nsd": case.mean_nsd,
    }


def _summary(run: EvaluationRun, reference: EvaluationRun, seed: int, gate: float) -> dict:
    """Means over cases, the bootstrap CI of mean DSC, the FP32 means and the drop against them
    (↓Δ%), and the accuracy gate (at least ``gate`` × the FP32 mean DSC)."""
    case_dsc = [c.mean_dsc for c in run.cases]
    mean_dsc = float(np.mean(case_dsc))
    mean_nsd = float(np.mean([c.mean_nsd for c in run.cases]))
    fp32_dsc = float(np.mean([c.mean_dsc for c in reference.cases]))
    fp32_nsd = float(np.mean([c.mean_nsd for c in reference.cases]))
    return {
        "mean_dsc": mean_dsc,
        "mean_nsd": mean_nsd,
        "dsc_ci95": bootstrap_ci(case_dsc, seed),
        "fp32_mean_dsc": fp32_dsc,
        "fp32_mean_nsd": fp32_nsd,
        "dsc_drop_pct": relative_drop_pct(mean_dsc, fp32_dsc),
        "nsd_drop_pct": relative_drop_pct(mean_nsd, fp32_nsd),
        "accuracy_gate": {"min_fraction_of_fp32": gate, "passed": mean_dsc >= gate * fp32_dsc},
        "num_cases": len(run.cases),
    }


def _compression(precision: dict, fp32_size_bytes: int) -> dict:
    """The entry's size against the FP32 reference's on the same backend."""
    size = precision.get("size_bytes")
    return {
        "size_bytes": size,
        "fp32_size_bytes": fp32_size_bytes,
        "x_smaller": fp32_size_bytes / size if size else None,
        "bits_per_weight": precision.get("bits_per_weight"),
    }


def write_result(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
