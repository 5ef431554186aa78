"""Plotly figures of a track page, as figure JSON (``{"data", "layout"}``) for Plotly.newPlot.

Figures are plain Plotly figure dicts serialised by ``plotly.io.json.to_json_plotly``: building
``graph_objects`` validates every point and costs more than the rest of the page on large boards.
"""

from __future__ import annotations

from plotly.io.json import to_json_plotly

from harness.entry.summary import split_of
from leaderboard.submissions.models import Evaluation, Kind, Status
from leaderboard.tracks.models import Track

LAYOUT = {
    "margin": {"l": 60, "r": 20, "t": 70, "b": 50},
    "height": 420,
    "template": "plotly_white",
    # below the plot, across its width: long entry names never narrow the plot area
    "legend": {"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},
}
LEGEND_MARGIN_PX = 110
"""Bottom margin of a chart with a legend: its axis title and two rows of legend entries."""
MIN_GRID_CELLS = 2
"""A granularity × bit-width grid of one cell compares nothing: it is not drawn."""
GRANULARITY_ORDER = {"per-tensor": 0, "per-channel": 1, "adaptive": 2}


def script_safe(figure: dict) -> str:
    """Figure JSON that can sit inside a <script> element (no raw <, > or &)."""
    text = to_json_plotly(figure)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another with cost ≤ x and DSC ≥ y (one strictly): the front of
    (cost x, accuracy y), sorted by x."""
    front: list[tuple[float, float]] = []
    best = float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def dsc_versus(
    rows: list[dict], column: str, title: str, reference: Evaluation | None = None
) -> str | None:
    """Scatter of mean DSC against ``column`` (size_mb or latency_ms) with the Pareto front and
    the FP32 ``reference`` point; ``rows`` are ranked board rows as dicts (rank, method,
    entrant, mean_dsc, the column)."""
    rows = [r for r in rows if r[column] is not None]
    fp32 = getattr(reference, column, None) if reference is not None else None
    if not rows and fp32 is None:
        return None
    xs = [r[column] for r in rows]
    ys = [r["mean_dsc"] for r in rows]
    front = pareto_front(list(zip(xs, ys, strict=True)))
    figure = {
        "data": [
            {
                "type": "scatter",
                "mode": "markers",
                "name": "entries",
                "x": xs,
                "y": ys,
                "text": [f"#{r['rank']} {r['method']} ({r['entrant']})" for r in rows],
            },
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": "Pareto front",
                "x": [p[0] for p in front],
                "y": [p[1] for p in front],
                "line": {"dash": "dash"},
            },
        ]
        + (
            [
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": "FP32 reference",
                    "x": [fp32],
                    "y": [reference.mean_dsc],
                    "text": ["FP32 reference (not ranked)"],
                    "marker": {"symbol": "star", "size": 14, "color": "black"},
                }
            ]
            if fp32 is not None
            else []
        ),  # fmt: skip
        "layout": LAYOUT
        | {
            "margin": LAYOUT["margin"] | {"b": LEGEND_MARGIN_PX},
            "title": {"text": title},
            "xaxis": {"title": {"text": title.split(" vs ")[1]}},
            "yaxis": {"title": {"text": "mean DSC"}},
        },
    }
    return script_safe(figure)


def per_class_dsc(evaluations: list[Evaluation]) -> str | None:
    """Grouped bars: per-class mean DSC of the selected entries (on the split the track ranks
    on, as the board's figures)."""
    if not evaluations:
        return None
    data = []
    for evaluation in evaluations:
        result = evaluation.result  # the per-class means of the split the track ranks on
        per_class = (split_of(result, evaluation.track.ranked_split) or result)["per_class"]
        per_class = per_class.values()
        data.append(
            {
                "type": "bar",
                "name": f"{evaluation.submission.method} (#{evaluation.submission_id})",
                "x": [c["name"] for c in per_class],
                "y": [c["mean_dsc"] for c in per_class],
            }
        )
    layout = LAYOUT | {
        "margin": LAYOUT["margin"] | {"b": LEGEND_MARGIN_PX},
        "title": {"text": "per-class DSC"},
        "yaxis": {"title": {"text": "mean DSC"}},
        "barmode": "group",
    }
    return script_safe({"data": data, "layout": layout})


CALIBRATED_SCHEME = r"-(mse|p[0-9.]+)$"
"""Scheme names whose static activation scales are calibrated otherwise than by max."""


def baseline_grid(track: Track) -> str | None:
    """Heatmap of the RTN baselines' mean DSC (MedQuanBench's granularity study, symmetric
    activations calibrated by max): granularity × bit-width over the tracks of the same model,
    dataset and backend; None below ``MIN_GRID_CELLS`` cells."""
    rows = (
        Evaluation.objects.filter(
            track__reference_model=track.reference_model,
            track__dataset=track.dataset,
            track__backend=track.backend,
            submission__is_baseline=True,
            submission__reference_method__in=("rtn", ""),
            submission__status=Status.DONE,
        )
        .exclude(submission__kind=Kind.FP32)
        .exclude(submission__scheme__contains="-asym")  # the study's grid is symmetric
        .exclude(submission__scheme__regex=CALIBRATED_SCHEME)  # and calibrated by max
        .values("granularity", "weight_bits", "activation_bits", "mean_dsc")
        .order_by("-weight_bits")
    )
    cells = {(r["granularity"], f"W{r['weight_bits']}A{r['activation_bits'] or 16}"): r["mean_dsc"]
             for r in rows}  # fmt: skip
    if len(cells) < MIN_GRID_CELLS:
        return None
    grans = sorted({g for g, _ in cells}, key=lambda g: (GRANULARITY_ORDER.get(g, 3), g))
    precisions = list(dict.fromkeys(p for _, p in cells))
    z = [[cells.get((g, p)) for g in grans] for p in precisions]
    figure = {
        "data": [
            {
                "type": "heatmap",
                "z": z,
                "x": grans,
                "y": precisions,
                "colorscale": "Viridis",
                "zmin": 0,
                "zmax": 1,
                "texttemplate": "%{text}",
                "text": [[f"{v:.3f}" if v is not None else "" for v in row] for row in z],
            },
        ],  # fmt: skip
        "layout": LAYOUT | {"title": {"text": "baselines: granularity × bit-width (mean DSC)"}},
    }
    return script_safe(figure)
