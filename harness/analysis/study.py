"""MedQuanBench-style study: FP32, then W8A8 and W4A4 under each granularity scheme, as a table of
mean DSC and NSD with their relative drop vs FP32 (↓Δ%). Activations are on the study's symmetric
grid; with ``activation_quantizers`` including ``asymmetric``, each scheme's row is followed by
the same scheme with asymmetric (zero-point) activations.

With reference methods (``methods``), the rows after FP32 are method × scheme instead: each scheme
is quantized with each method (``reference_methods.methods``) on the track's calibration patches,
saved as a quantized checkpoint and evaluated as that checkpoint, so its precision is the one
read back from the artifact; the row carries the method's name.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from harness.entry.baseline import compute_baseline
from harness.entry.upload import Submission, evaluate_submission
from harness.scoring.evaluation import EvaluationRun
from harness.track.loaded import LoadedTrack
from reference_methods.methods import method_config, parse_method
from reference_methods.simulator.scheme import ACTIVATION_QUANTIZERS, QuantConfig

STUDY_PRECISIONS: tuple[str, ...] = ("w8a8", "w4a4")
STUDY_GRANULARITIES: tuple[str, ...] = ("per-tensor", "per-channel", "adaptive")
STUDY_ACTIVATION_QUANTIZERS: tuple[str, ...] = ("symmetric",)
"""The study's definition; asymmetric rows are asked for."""


def study_schemes(
    precisions: Sequence[str] = STUDY_PRECISIONS,
    granularities: Sequence[str] = STUDY_GRANULARITIES,
    activation_quantizers: Sequence[str] = STUDY_ACTIVATION_QUANTIZERS,
) -> list[str]:
    """Scheme names, precision by precision, granularity by granularity, each with its
    activation quantizers side by side (weight-only precisions have none: one row)."""
    unknown = sorted(set(activation_quantizers) - set(ACTIVATION_QUANTIZERS))
    if unknown:
        raise ValueError(
            f"unknown activation quantizer(s) {', '.join(unknown)} (expected one of: "
            f"{', '.join(ACTIVATION_QUANTIZERS)})"
        )
    schemes = []
    for p in precisions:
        for g in granularities:
            for quantizer in activation_quantizers:
                scheme = f"{p}-{g}" + ("-asym" if quantizer == "asymmetric" else "")
                if QuantConfig.from_scheme(f"{p}-{g}").activation_bits is None:
                    scheme = f"{p}-{g}"
                if scheme not in schemes:
                    schemes.append(scheme)
    return schemes


def _activation_grid(submission: dict) -> str:
    """``symmetric`` / ``asymmetric`` activations of a row's scheme, ``none`` without any."""
    if submission["kind"] == "fp32":
        return "none"
    config = QuantConfig.from_scheme(submission["scheme"])
    return "none" if config.activation_bits is None else config.activation_quantizer


def study_row(result: dict) -> dict:
    """One row of the study table from a result document: scheme, precision label, granularity,
    activation grid, mean DSC / NSD with their ↓Δ% vs FP32, DSC CI, gate, bits per weight (and
    the method, when the result records one)."""
    submission = result["submission"]
    summary, precision = result["summary"], submission["precision"]
    bits_w, bits_a = precision["weight_bits"], precision["activation_bits"]
    method = {"method": submission["method"]} if "method" in submission else {}
    granularity = precision["granularity"]
    if method:
        granularity = QuantConfig.from_scheme(submission["scheme"]).granularity.value
    return method | {
        "scheme": submission["scheme"],
        "precision": "FP32" if bits_w == 32 else f"W{bits_w}A{bits_a or 16}",
        "granularity": granularity,
        "activation_quantizer": _activation_grid(submission),
        "mean_dsc": summary["mean_dsc"],
        "mean_nsd": summary["mean_nsd"],
        "dsc_drop_pct": summary["dsc_drop_pct"],
        "nsd_drop_pct": summary["nsd_drop_pct"],
        "dsc_ci95": summary["dsc_ci95"],
        "accuracy_gate_passed": summary["accuracy_gate"]["passed"],
        "bits_per_weight": precision.get("bits_per_weight"),
    }


def evaluate_method(
    track: LoadedTrack,
    method: str,
    scheme: str,
    fp32: EvaluationRun,
    progress: bool = False,
) -> dict:
    """Result of ``scheme`` quantized by ``method`` (a name, or ``name[option=value,...]``),
    evaluated as the quantized checkpoint it saves to (see
    ``harness.entry.baseline.compute_baseline``); the result records ``method`` as given."""
    name, options = parse_method(method)
    with tempfile.TemporaryDirectory() as tmp:
        return compute_baseline(
            track,
            method=name,
            scheme=scheme,
            workdir=Path(tmp),
            options=options,
            fp32=fp32,
            progress=progress,
            about={"method": method},
        ).result


def run_study(
    track: LoadedTrack,
    schemes: Sequence[str],
    progress: bool = False,
    methods: Sequence[str] = (),
) -> dict:
    """Evaluate FP32 and every scheme on the track's test cases, or with ``methods`` every
    (method, scheme) pair, method by method; one result per row. Every scheme and method is
    checked before anything is evaluated."""
    configs = [QuantConfig.from_scheme(scheme) for scheme in schemes]
    for method in methods:
        name, options = parse_method(method)
        for config in configs:
            method_config(name, config, options)
    rows = tqdm(total=1 + len(schemes) * max(1, len(methods)), desc="study rows",
                unit="row", disable=not progress)  # fmt: skip
    with rows:
        evaluated = evaluate_submission(track, Submission("fp32"), progress=progress)
        fp32_result, fp32_run = evaluated.result, evaluated.run
        results = [fp32_result]
        rows.update()
        for method in methods or [None]:
            for scheme in schemes:
                rows.set_postfix_str(f"{method} {scheme}" if method else scheme)
                if method:
                    results.append(evaluate_method(track, method, scheme, fp32_run, progress))
                else:
                    submission = Submission("scheme", scheme=scheme)
                    results.append(
                        evaluate_submission(
                            track, submission, fp32=fp32_run, progress=progress
                        ).result
                    )
                rows.update()
    return {
        "track": fp32_result["track"],
        "rows": [study_row(r) for r in results],
        "results": results,
    }


def format_metric(value: float, drop_pct: float) -> str:
    """A table cell as the study prints it: ``0.874 (↓1.2%)``."""
    return f"{value:.3f} (↓{drop_pct:.1f}%)"


def format_table(rows: list[dict], title: str = "") -> str:
    """Plain-text table: Precision | Granularity | DSC (↓Δ%) | NSD (↓Δ%), led by a Method column
    when some row carries a method, with an Activations column (symmetric / asymmetric) when some
    row has asymmetric activations."""
    methods = any("method" in r for r in rows)
    grids = any(r.get("activation_quantizer") == "asymmetric" for r in rows)
    width = max([len("Method"), *(len(r.get("method", "")) for r in rows)]) if methods else 0
    lead = f"{'Method':<{width}} " if methods else ""
    grid = f"{'Activations':<12} " if grids else ""
    header = (
        f"{lead}{'Precision':<10} {'Granularity':<13} {grid}{'DSC (↓Δ%)':>17} {'NSD (↓Δ%)':>17}"
    )
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for r in rows:
        lead = f"{r.get('method', '-'):<{width}} " if methods else ""
        grid = f"{r.get('activation_quantizer', '-'):<12} " if grids else ""
        dsc = format_metric(r["mean_dsc"], r["dsc_drop_pct"])
        nsd = format_metric(r["mean_nsd"], r["nsd_drop_pct"])
        lines.append(f"{lead}{r['precision']:<10} {r['granularity']:<13} {grid}{dsc:>17} {nsd:>17}")
    return "\n".join(lines)
