"""Settings helpers read from the environment: ``DATABASE_URL`` parsing and bundled asset paths."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import plotly

PERSISTENT = {"CONN_MAX_AGE": 60}
"""Connections are kept for a minute across requests: opening one (and, on SQLite, setting it up)
costs more than serving a cached page."""


def database_from_url(url: str | None, sqlite_path: Path) -> dict:
    """Django ``DATABASES['default']`` from ``postgres://user:pass@host:port/name`` (or SQLite).

    No URL means the embedded SQLite file ``sqlite_path``; ``sqlite:///path`` names another file.
    A ``host`` query parameter (``?host=/run/postgresql``) selects a Unix socket directory.
    """
    if not url:
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": sqlite_path} | PERSISTENT
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = parts.path[1:] or sqlite_path
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": path} | PERSISTENT
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(
            f"DATABASE_URL scheme {parts.scheme!r} is not supported (postgres, sqlite)"
        )
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": unquote(query.get("host", parts.hostname or "")),
        "PORT": str(parts.port or ""),
    } | PERSISTENT


def plotly_js_dir() -> Path:
    """Folder of the plotly.min.js bundled with the Python package (served as a static file)."""
    return Path(plotly.__file__).parent / "package_data"
