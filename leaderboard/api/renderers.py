"""CSV renderer for flat row lists (the leaderboard)."""

import csv
import io

from rest_framework.renderers import BaseRenderer

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""A text cell starting with one of these is a formula to a spreadsheet (CSV injection): such
cells are written with a leading apostrophe, which spreadsheets show as text."""


def spreadsheet_safe(value):
    """``value``, with text a spreadsheet would evaluate as a formula made plain text."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


class CSVRenderer(BaseRenderer):
    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None) -> str:
        """Rows as CSV under a header line: the first row's keys, or with no row the columns
        ``renderer_context["header"]`` names (an empty board is a header alone)."""
        rows = data if isinstance(data, list) else [data]
        header = list(rows[0]) if rows else (renderer_context or {}).get("header", [])
        out = io.StringIO()
        if header:
            writer = csv.DictWriter(out, fieldnames=header, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
        return out.getvalue()
