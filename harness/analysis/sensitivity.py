"""Layer sensitivity of a track's reference model: incremental dequantization scored by mean DSC.

The score of a model is the mean over test cases of the per-case mean foreground DSC (the result
document's ``summary.mean_dsc``), on the track's first ``cases`` test cases. The report ranks the
layer groups by the DSC they recover when kept in floating point, and scores the top-k groups
kept in floating point together. Written as ``sensitivity.json`` plus a Plotly ``sensitivity.html``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from torch import nn
from tqdm import tqdm

from harness.data.dataset import Case
from harness.errors import HarnessError
from harness.scoring.evaluation import evaluate_cases
from harness.track.loaded import LoadedTrack
from reference_methods.simulator.scheme import QuantConfig
from reference_methods.statistics.sensitivity import (
    GroupBy,
    Score,
    incremental_dequantization,
    keep_most_sensitive,
    layer_groups,
)

JSON_FILE = "sensitivity.json"
HTML_FILE = "sensitivity.html"
TOP_K = 3


def scored_cases(track: LoadedTrack, cases: int | None) -> tuple[Case, ...]:
    """The first ``cases`` test cases of the track (all of them when None)."""
    if cases is not None and cases < 1:
        raise HarnessError(f"--cases must be at least 1, got {cases}")
    return track.test_cases[:cases]


def dsc_score(track: LoadedTrack, cases: tuple[Case, ...]) -> Score:
    """model → mean over ``cases`` of the per-case mean foreground DSC."""

    def score(model: nn.Module) -> float:
        run = evaluate_cases(
            model,
            track.model_spec,
            cases,
            track.dataset.labels,
            track.spec.nsd_tolerance_mm,
            nsd_definition=track.spec.nsd_definition,
        )
        return float(np.mean([c.mean_dsc for c in run.cases]))

    return score


def run_sensitivity(
    track: LoadedTrack,
    scheme: str,
    by: GroupBy = "kind",
    cases: int | None = None,
    top_k: int = TOP_K,
    progress: bool = False,
) -> dict:
    """Sensitivity report of ``track`` under ``scheme`` (a QuantConfig name, e.g. w4a4-per-tensor).

    Scores FP32, the fully quantized model, every group kept in floating point, then the top
    1..``top_k`` groups kept in floating point together (fewer when there are fewer groups).
    """
    if top_k < 0:
        raise HarnessError(f"--top-k must be at least 0, got {top_k}")
    start = time.perf_counter()
    config = QuantConfig.from_scheme(scheme)
    reference = track.torch_model("sensitivity analysis")
    groups = layer_groups(reference, by)
    chosen = scored_cases(track, cases)
    calibration = track.calibration
    ks = range(1, min(top_k, len(groups)) + 1)
    bar = tqdm(total=2 + len(groups) + len(ks), desc="sensitivity", disable=not progress)
    dsc = dsc_score(track, chosen)

    def score(model: nn.Module) -> float:
        value = dsc(model)
        bar.update()
        return value

    try:
        analysis = incremental_dequantization(reference, config, groups, score, calibration)
        top = keep_most_sensitive(reference, analysis, ks, score, calibration)
    finally:
        bar.close()
    return {
        "track": track.track_info() | {"test_cases": [c.case_id for c in chosen]},
        "scheme": config.name,
        "by": by,
        "fp32_dsc": analysis.float_score,
        "quantized_dsc": analysis.quantized_score,
        "groups": [
            {
                "rank": rank,
                "group": r.group.name,
                "kind": r.group.kind,
                "layers": list(r.group.layers),
                "parameters": r.group.parameters,
                "dsc_kept_fp": r.score,
                "dsc_recovered": r.recovered,
                "gap_recovered": analysis.gap_fraction(r.recovered),
            }
            for rank, r in enumerate(analysis.ranked, start=1)
        ],
        "keep_top_k": [
            {
                "k": kept.k,
                "groups": [g.name for g in kept.groups],
                "layers": list(kept.layers),
                "dsc": kept.score,
                "dsc_recovered": kept.score - analysis.quantized_score,
                "gap_recovered": analysis.gap_fraction(kept.score - analysis.quantized_score),
            }
            for kept in top
        ],
        "seconds": round(time.perf_counter() - start, 1),
    }


def format_sensitivity(report: dict) -> str:
    """Plain-text ranked table plus the top-k keep-in-FP scores."""
    track = report["track"]
    precision = report["scheme"]
    width = max(len("group"), *(len(g["group"]) for g in report["groups"]))
    lines = [
        f"{track['model']} ({track['architecture']}) on {track['dataset']}, "
        f"{len(track['test_cases'])} test cases · {precision} · by {report['by']}",
        f"FP32 DSC {report['fp32_dsc']:.4f}   {precision} DSC {report['quantized_dsc']:.4f}",
    ]
    header = (
        f"{'rank':>4}  {'group':<{width}}  {'kind':<16} {'#params':>9}  "
        f"{'DSC kept FP':>11}  {'DSC recovered':>13}"
    )
    lines += [header, "-" * len(header)]
    for g in report["groups"]:
        lines.append(
            f"{g['rank']:>4}  {g['group']:<{width}}  {g['kind']:<16} {g['parameters']:>9,}  "
            f"{g['dsc_kept_fp']:>11.4f}  {g['dsc_recovered']:>+13.4f}"
        )
    lines.append(f"{precision} with the top-k groups kept in floating point:")
    for kept in report["keep_top_k"]:
        lines.append(
            f"  k={kept['k']}: DSC {report['quantized_dsc']:.4f} → {kept['dsc']:.4f} "
            f"({kept['dsc_recovered']:+.4f})  keeping {', '.join(kept['groups'])}"
        )
    return "\n".join(lines)


def sensitivity_figure(report: dict) -> go.Figure:
    """Ranked bars of DSC recovered per group, and the DSC with the top-k groups kept in FP."""
    groups, top = report["groups"], report["keep_top_k"]
    precision = report["scheme"]
    figure = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.78, 0.22],
        subplot_titles=(
            f"DSC recovered when kept in FP (vs {precision}: {report['quantized_dsc']:.3f})",
            "DSC with the top-k kept in FP",
        ),
    )
    figure.add_trace(
        go.Bar(
            x=[g["group"] for g in groups],
            y=[g["dsc_recovered"] for g in groups],
            customdata=[
                [g["kind"], g["parameters"], g["dsc_kept_fp"], len(g["layers"])] for g in groups
            ],
            hovertemplate=(
                "%{x}<br>kind %{customdata[0]}, %{customdata[3]} layer(s), "
                "%{customdata[1]:,} params<br>DSC kept FP %{customdata[2]:.4f}"
                "<br>recovered %{y:+.4f}<extra></extra>"
            ),
            name="DSC recovered",
        ),
        row=1,
        col=1,
    )
    figure.add_trace(
        go.Bar(
            x=["quantized", *(f"top-{kept['k']}" for kept in top)],
            y=[report["quantized_dsc"], *(kept["dsc"] for kept in top)],
            hovertext=["all layers quantized", *(", ".join(kept["groups"]) for kept in top)],
            name="DSC",
        ),
        row=1,
        col=2,
    )
    figure.add_hline(y=report["fp32_dsc"], line_dash="dash", annotation_text="FP32", row=1, col=2)
    track = report["track"]
    figure.update_layout(
        title=(
            f"Layer sensitivity by incremental dequantization: {track['model']} on "
            f"{track['dataset']}, {precision}, by {report['by']}"
        ),
        showlegend=False,
        height=560,
    )
    figure.update_xaxes(tickangle=-45, row=1, col=1)
    figure.update_yaxes(title_text="mean DSC recovered", row=1, col=1)
    figure.update_yaxes(title_text="mean DSC", range=[0, 1], row=1, col=2)
    return figure


def write_sensitivity(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``sensitivity.json`` and a self-contained (offline) ``sensitivity.html``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / JSON_FILE, out_dir / HTML_FILE
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    sensitivity_figure(report).write_html(html_path, include_plotlyjs=True)
    return json_path, html_path
