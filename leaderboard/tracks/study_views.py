"""Study pages (``leaderboard.tracks.study``): per model, across models, per reference method;
each as HTML, or with ``?format=csv`` / ``?format=json`` as data."""

from __future__ import annotations

import csv
import io

from django.contrib.messages import get_messages
from django.core.cache import cache
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render

from harness.entry.baseline import ptq_methods
from leaderboard.tracks import ranking, study
from leaderboard.tracks.models import ReferenceModel

CELL_COLUMNS = ["mean_dsc", "dsc_drop_pct", "mean_nsd", "nsd_drop_pct", "mean_hd95",
                "calibration_sd", "submission", "track"]  # fmt: skip
FORMATS = ("html", "csv", "json")


def _format(request) -> str:
    """The requested format; anything else is a 404 naming the formats."""
    name = request.GET.get("format", "html")
    if name not in FORMATS:
        raise Http404(f"unknown format {name!r}; use one of {', '.join(FORMATS)}")
    return name


def _csv(filename: str, header: list[str], rows: list[list]) -> HttpResponse:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _cell_values(cell: dict | None) -> list:
    return [cell[c] if cell else None for c in CELL_COLUMNS]


def model_study(request, slug: str):
    """The study table (Table 1 layout) of one reference model, per dataset; as HTML for
    visitors without an account, the whole page is cached until one of its tracks is
    re-ranked."""
    fmt = _format(request)
    anonymous = fmt == "html" and not request.user.is_authenticated and not get_messages(request)
    version = study.model_version(slug) if anonymous else None
    page_key = ranking.versioned_key("study-page", request.get_host(), version)
    if version is not None and (page := cache.get(page_key)) is not None:
        return HttpResponse(page)
    model = get_object_or_404(ReferenceModel, slug=slug)
    tables = study.model_tables(model)
    if fmt == "json":
        return JsonResponse({"model": slug, "tables": tables}, json_dumps_params={"indent": 1})
    if fmt == "csv":
        rows = []
        for table in tables:
            dataset = table["dataset"]["slug"]
            rows.append([dataset, "FP32", "none", "none", "fp32", *_cell_values(table["fp32"])])
            for row in table["rows"]:
                rows.append([dataset, row["precision"], row["granularity"], row["calibration"],
                             row["scheme"], *_cell_values(row["cell"])])  # fmt: skip
        header = ["dataset", "precision", "granularity", "activation_calibration", "scheme",
                  *CELL_COLUMNS]  # fmt: skip
        return _csv(f"study-{slug}.csv", header, rows)
    response = render(request, "tracks/study_model.html", {"model": model, "tables": tables})
    if version is not None:
        cache.set(page_key, response.content, study.CACHE_SECONDS)
    return response


def cross_model_study(request):
    """One row per model, one column per precision × granularity, per dataset."""
    fmt = _format(request)
    tables = study.cross_model_tables()
    if fmt == "json":
        return JsonResponse({"tables": tables}, json_dumps_params={"indent": 1})
    if fmt == "csv":
        rows = []
        for table in tables:
            for row in table["rows"]:
                cells = [("fp32", row["fp32"])] + [
                    (c["scheme"], cell)
                    for c, cell in zip(table["columns"], row["cells"], strict=True)
                ]
                for scheme, cell in cells:
                    rows.append([table["dataset"]["slug"], row["model"]["slug"],
                                 row["model"]["family"], scheme, *_cell_values(cell)])  # fmt: skip
        header = ["dataset", "model", "family", "scheme", *CELL_COLUMNS]
        return _csv("study.csv", header, rows)
    return render(request, "tracks/study_index.html", {"tables": tables})


def method_page(request, name: str):
    """A reference method's baselines across every model, dataset, precision and backend."""
    fmt = _format(request)
    methods = ptq_methods()
    if name not in methods:
        raise Http404(f"no reference method {name!r}")
    entries = study.method_entries(name)
    if fmt == "json":
        return JsonResponse({"method": name, "entries": entries}, json_dumps_params={"indent": 1})
    if fmt == "csv":
        columns = ["dataset", "model", "family", "backend", "precision", "granularity", "scheme",
                   "label", "rank", "gate_passed", *CELL_COLUMNS]  # fmt: skip
        return _csv(f"method-{name}.csv", columns, [[e[c] for c in columns] for e in entries])
    label, summary = methods[name]
    context = {"name": name, "label": label, "summary": summary, "entries": entries,
               "methods": methods}  # fmt: skip
    return render(request, "tracks/method.html", context)
