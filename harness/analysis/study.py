"""MedQuanBench-style study: FP32, then W8A8 and W4A4 under each granularity scheme, as a table of
mean DSC and NSD with their relative drop vs FP32 (↓Δ%). Activations are on the study's symmetric
grid; with ``activation_quantizers`` including ``asymmetric``, each scheme's row is followed by
the same scheme with asymmetric (zero-point) activations; with ``activation_calibrations``
beyond ``max``, by the same scheme with static activation scales calibrated at the
``DEFAULT_PERCENTILE`` percentile (``-p99.99``) or by least squared error (``-mse``).

With ``calibration_resamples`` K > 0, every quantized row is re-run on K calibration sets
resampled from the track's calibration pool (``harness.analysis.calibration_robustness``); its
result holds the spread of mean DSC (``summary.calibration``), the row its ``calibration_sd``
("± calibration").

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

from harness.analysis.calibration_robustness import calibration_spread
from harness.entry.baseline import (
    CALIBRATION_BASELINE_GRANULARITY,
    CALIBRATION_BASELINE_SUFFIXES,
    compute_baseline,
)
from harness.entry.upload import Submission, evaluate_submission
from harness.scoring.evaluation import EvaluationRun
from harness.track.loaded import LoadedTrack
from reference_methods.methods import method_config, parse_method
from reference_methods.simulator.calibration import DEFAULT_PERCENTILE, ActivationCalibration
from reference_methods.simulator.scheme import ACTIVATION_QUANTIZERS, QuantConfig

STUDY_PRECISIONS: tuple[str, ...] = ("w8a8", "w4a4")
STUDY_GRANULARITIES: tuple[str, ...] = ("per-tensor", "per-channel", "adaptive")
STUDY_ACTIVATION_QUANTIZERS: tuple[str, ...] = ("symmetric",)
"""The study's definition; asymmetric rows are asked for."""
STUDY_ACTIVATION_CALIBRATIONS: tuple[str, ...] = ("max",)
"""The study's calibration of static activation scales; percentile / MSE rows are asked for."""
CALIBRATION_SUFFIXES = {
    ActivationCalibration.MAX.value: "",
    ActivationCalibration.PERCENTILE.value: f"-p{DEFAULT_PERCENTILE:g}",
    ActivationCalibration.MSE.value: "-mse",
}
"""Scheme-name suffix of each activation calibration (``QuantConfig.from_scheme``)."""


def study_schemes(
    precisions: Sequence[str] = STUDY_PRECISIONS,
    granularities: Sequence[str] = STUDY_GRANULARITIES,
    activation_quantizers: Sequence[str] = STUDY_ACTIVATION_QUANTIZERS,
    activation_calibrations: Sequence[str] = STUDY_ACTIVATION_CALIBRATIONS,
) -> list[str]:
    """Scheme names, precision by precision, granularity by granularity, each with its
    activation quantizers, and within each its activation calibrations, side by side
    (weight-only precisions have neither: one row)."""
    for kind, asked, known in (
        ("activation quantizer", activation_quantizers, ACTIVATION_QUANTIZERS),
        ("activation calibration", activation_calibrations, tuple(CALIBRATION_SUFFIXES)),
    ):
        unknown = sorted(set(asked) - set(known))
        if unknown:
            raise ValueError(
                f"unknown {kind}(s) {', '.join(unknown)} (expected one of: {', '.join(known)})"
            )
    schemes = []
    for p in precisions:
        for g in granularities:
            for quantizer in activation_quantizers:
                for calibration in activation_calibrations:
                    scheme = f"{p}-{g}" + ("-asym" if quantizer == "asymmetric" else "")
                    scheme += CALIBRATION_SUFFIXES[calibration]
                    if QuantConfig.from_scheme(f"{p}-{g}").activation_bits is None:
                        scheme = f"{p}-{g}"
                    if scheme not in schemes:
                        schemes.append(scheme)
    return schemes


def calibration_rows(scheme: str) -> list[tuple[str, str]]:
    """(scheme, activation calibration) of a study scheme's rows on the site's study page: itself
    (``max``; ``none`` weight-only), then, at the granularity of the activation-calibration
    baselines, its percentile and MSE variants (``harness.entry.baseline``)."""
    config = QuantConfig.from_scheme(scheme)
    if config.activation_bits is None:
        return [(scheme, "none")]
    rows = [(scheme, config.activation_calibration.value)]
    if config.granularity.value == CALIBRATION_BASELINE_GRANULARITY:
        for suffix in CALIBRATION_BASELINE_SUFFIXES:
            variant = QuantConfig.from_scheme(scheme + suffix)
            rows.append((scheme + suffix, variant.activation_calibration.value))
    return rows


def _activation_calibration(submission: dict) -> str:
    """How the row's static activation scales were calibrated (``none`` without any)."""
    if submission["kind"] == "fp32" or "scheme" not in submission:
        return "none"
    config = QuantConfig.from_scheme(submission["scheme"])
    return "none" if config.activation_bits is None else config.activation_calibration.value


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
        "activation_calibration": _activation_calibration(submission),
        "mean_dsc": summary["mean_dsc"],
        "mean_hd95": summary.get("mean_hd95"),
        "calibration_sd": (summary.get("calibration") or {}).get("sd"),
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
    calibration_resamples: int = 0,
) -> dict:
    """Evaluate FP32 and every scheme on the track's test cases, or with ``methods`` every
    (method, scheme) pair, method by method; one result per row, each quantized row re-run on
    ``calibration_resamples`` resampled calibration sets (its spread in
    ``summary.calibration``). Every scheme and method is checked before anything is evaluated."""
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

                def row(on: LoadedTrack, method=method, scheme=scheme) -> dict:
                    if method:
                        return evaluate_method(on, method, scheme, fp32_run, progress)
                    submission = Submission("scheme", scheme=scheme)
                    return evaluate_submission(
                        on, submission, fp32=fp32_run, progress=progress
                    ).result

                result = row(track)
                if calibration_resamples:
                    spread = calibration_spread(track, row, calibration_resamples)
                    result["summary"]["calibration"] = spread
                results.append(result)
                rows.update()
    return {
        "track": fp32_result["track"],
        "rows": [study_row(r) for r in results],
        "results": results,
    }


def format_metric(value: float, drop_pct: float) -> str:
    """A table cell as the study prints it: ``0.874 (↓1.2%)``; a gain over FP32 is ``(↑0.3%)``
    and a drop that rounds to nothing ``(↓0.0%)``, never ``(↓-0.0%)``."""
    shown = round(drop_pct, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{value:.3f} ({'↑' if shown < 0 else '↓'}{abs(shown):.1f}%)"


def format_table(rows: list[dict], title: str = "") -> str:
    """Plain-text table: Precision | Granularity | DSC (↓Δ%) | NSD (↓Δ%), led by a Method column
    when some row carries a method, with an Activations column (symmetric / asymmetric) when some
    row has asymmetric activations, a Calibration column (max / percentile / mse) when some row
    is not calibrated by max, HD95 (mm) when the rows have it and "± calibration" (the sd of mean
    DSC over resampled calibration sets) when some row was re-run."""
    methods = any("method" in r for r in rows)
    grids = any(r.get("activation_quantizer") == "asymmetric" for r in rows)
    calibrations = any(r.get("activation_calibration") not in (None, "none", "max") for r in rows)
    hd95 = all(r.get("mean_hd95") is not None for r in rows)
    spread = any(r.get("calibration_sd") is not None for r in rows)
    width = max([len("Method"), *(len(r.get("method", "")) for r in rows)]) if methods else 0
    lead = f"{'Method':<{width}} " if methods else ""
    grid = f"{'Activations':<12} " if grids else ""
    grid += f"{'Calibration':<12} " if calibrations else ""
    header = (
        f"{lead}{'Precision':<10} {'Granularity':<13} {grid}{'DSC (↓Δ%)':>17} {'NSD (↓Δ%)':>17}"
        + (f" {'HD95 mm':>8}" if hd95 else "")
        + (f" {'± calibration':>13}" if spread else "")
    )
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for r in rows:
        lead = f"{r.get('method', '-'):<{width}} " if methods else ""
        grid = f"{r.get('activation_quantizer', '-'):<12} " if grids else ""
        grid += f"{r.get('activation_calibration', '-'):<12} " if calibrations else ""
        dsc = format_metric(r["mean_dsc"], r["dsc_drop_pct"])
        nsd = format_metric(r["mean_nsd"], r["nsd_drop_pct"])
        tail = f" {r['mean_hd95']:>8.2f}" if hd95 else ""
        if spread:
            sd = r.get("calibration_sd")
            tail += f" {'±' + format(sd, '.4f') if sd is not None else '-':>13}"
        lines.append(
            f"{lead}{r['precision']:<10} {r['granularity']:<13} {grid}{dsc:>17} {nsd:>17}{tail}"
        )
    return "\n".join(lines)
