"""Activation report of a track's reference model on its calibration batches: per-layer within- vs
across-channel kurtosis and the per-channel outlier map (see
``reference_methods.statistics.activations``), written as ``activations.json`` plus a Plotly
``activations.html``. Kurtosis is excess (Fisher) kurtosis, 0 for a Gaussian; undefined values
(constant channels, one channel) are JSON null."""

from __future__ import annotations

import json
import math
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from harness.track.loaded import LoadedTrack
from reference_methods.statistics.activations import OUTLIER_THRESHOLD, analyse_activations

JSON_FILE = "activations.json"
HTML_FILE = "activations.html"
TOP_OUTLIER_LAYERS = 8


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def activation_report(track: LoadedTrack, threshold: float = OUTLIER_THRESHOLD) -> dict:
    """Statistics of every quantizable layer's input over the track's calibration batches."""
    if threshold <= 1:
        raise ValueError(f"the outlier threshold is a ratio to the median, > 1; got {threshold}")
    batches = track.calibration
    layers = analyse_activations(track.torch_model("activation analysis"), batches)
    return {
        "track": track.track_info(),
        "calibration_batches": len(batches),
        "kurtosis": "excess (Fisher): m4 / m2^2 - 3, 0 for a Gaussian",
        "outlier_threshold": threshold,
        "layers": [
            {
                "layer": a.name,
                "kind": a.kind,
                "channels": len(a.channel_absmax),
                "values_per_channel": a.values_per_channel,
                "within_channel_kurtosis": _finite(a.within_channel_kurtosis),
                "across_channel_kurtosis": _finite(a.across_channel_kurtosis),
                "max_outlier_ratio": a.max_outlier_ratio,
                "outlier_fraction": a.outlier_fraction(threshold),
                "channel_absmax": list(a.channel_absmax),
                "outlier_ratios": list(a.outlier_ratios),
            }
            for a in layers
        ],
    }


def top_outlier_layers(report: dict, top: int = TOP_OUTLIER_LAYERS) -> list[dict]:
    """The ``top`` layers with the largest max outlier ratio, largest first."""
    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    return sorted(report["layers"], key=lambda layer: layer["max_outlier_ratio"], reverse=True)[
        :top
    ]


def format_activations(report: dict, top: int = TOP_OUTLIER_LAYERS) -> str:
    """Plain-text table of the ``top`` outlier layers with their kurtoses."""

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    rows = top_outlier_layers(report, top)
    width = max(len("layer"), *(len(layer["layer"]) for layer in rows))
    header = (
        f"{'layer':<{width}}  {'kind':<16} {'C':>4}  {'κ within':>9}  {'κ across':>9}  "
        f"{'max a/med':>9}  {'outliers':>8}"
    )
    lines = [
        f"{len(report['layers'])} layers, {report['calibration_batches']} calibration batches; "
        f"top {len(rows)} by max outlier ratio (outlier: a_c > "
        f"{report['outlier_threshold']:g} × median):",
        header,
        "-" * len(header),
    ]
    for layer in rows:
        lines.append(
            f"{layer['layer']:<{width}}  {layer['kind']:<16} {layer['channels']:>4}  "
            f"{number(layer['within_channel_kurtosis']):>9}  "
            f"{number(layer['across_channel_kurtosis']):>9}  "
            f"{layer['max_outlier_ratio']:>9.2f}  {layer['outlier_fraction']:>8.1%}"
        )
    return "\n".join(lines)


def activation_figure(report: dict, top: int = TOP_OUTLIER_LAYERS) -> go.Figure:
    """Per-layer kurtosis bars (within vs across channels) over a heatmap of a_c / median(a)
    for the ``top`` outlier layers (one row per layer, one column per channel)."""
    layers = report["layers"]
    names = [layer["layer"] for layer in layers]
    outliers = top_outlier_layers(report, top)
    width = max(layer["channels"] for layer in outliers)
    ratios = [layer["outlier_ratios"] + [None] * (width - layer["channels"]) for layer in outliers]
    absmax = [layer["channel_absmax"] + [None] * (width - layer["channels"]) for layer in outliers]
    figure = make_subplots(
        rows=2,
        cols=1,
        row_heights=[0.55, 0.45],
        vertical_spacing=0.22,
        subplot_titles=(
            "Input kurtosis per layer (excess; 0 = Gaussian)",
            f"Per-channel absmax / layer median, top {len(outliers)} outlier layers "
            f"(threshold {report['outlier_threshold']:g})",
        ),
    )
    for key, label in (
        ("within_channel_kurtosis", "within channel"),
        ("across_channel_kurtosis", "across channels"),
    ):
        figure.add_trace(
            go.Bar(x=names, y=[layer[key] for layer in layers], name=label), row=1, col=1
        )
    figure.add_trace(
        go.Heatmap(
            z=ratios,
            y=[layer["layer"] for layer in outliers],
            customdata=absmax,
            colorscale="Viridis",
            colorbar={"title": "a_c / median", "len": 0.4, "y": 0.2},
            hovertemplate=(
                "%{y}, channel %{x}<br>absmax %{customdata:.4g}<br>ratio %{z:.2f}<extra></extra>"
            ),
            showlegend=False,
        ),
        row=2,
        col=1,
    )
    track = report["track"]
    figure.update_layout(
        title=f"Activation analysis: {track['model']} on {track['dataset']} calibration data",
        barmode="group",
        height=900,
        legend={"orientation": "h", "y": 1.04},
    )
    figure.update_xaxes(tickangle=-45, row=1, col=1)
    figure.update_yaxes(title_text="kurtosis", row=1, col=1)
    figure.update_xaxes(title_text="input channel", row=2, col=1)
    figure.update_yaxes(autorange="reversed", row=2, col=1)
    return figure


def write_activation_report(
    report: dict, out_dir: str | Path, top: int = TOP_OUTLIER_LAYERS
) -> tuple[Path, Path]:
    """Write ``activations.json`` and a self-contained (offline) ``activations.html``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / JSON_FILE, out_dir / HTML_FILE
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    activation_figure(report, top).write_html(html_path, include_plotlyjs=True)
    return json_path, html_path
