"""Settings helpers read from the environment: ``DATABASE_URL`` parsing, the secret key, the
broker's visibility timeout."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

PERSISTENT = {"CONN_MAX_AGE": 60}
"""Connections are kept for a minute across requests: opening one (and, on SQLite, setting it up)
costs more than serving a cached page."""


def database_from_url(url: str | None, sqlite_path: Path) -> dict:
    """Django ``DATABASES['default']`` from ``postgres://user:pass@host:port/name`` (or SQLite).

    No URL means the embedded SQLite file ``sqlite_path``; ``sqlite:///path`` names another file.
    A ``host`` query parameter (``?host=/run/postgresql``) selects a Unix socket directory.
    """
    if not url:
        return _sqlite(sqlite_path)
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return _sqlite(parts.path[1:] or sqlite_path)
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
        # a persistent connection is checked before reuse: after a PostgreSQL restart a request
        # reconnects instead of failing on the stale connection
        "CONN_HEALTH_CHECKS": True,
    } | PERSISTENT


SQLITE_BUSY_TIMEOUT_S = 30
"""How long an SQLite writer waits for the lock before "database is locked": a handful of
concurrent submissions each hold it for milliseconds."""


def _sqlite(path) -> dict:
    """SQLite in WAL mode (readers never block the writer) with a busy timeout, and write
    transactions that take the lock when they begin (``IMMEDIATE``), so concurrent writers queue
    instead of failing on a lock upgrade."""
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": path,
        "OPTIONS": {
            "timeout": SQLITE_BUSY_TIMEOUT_S,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    } | PERSISTENT


DEVELOPMENT_SECRET_KEY = "insecure-development-key-change-me"
"""The built-in key: accepted only with DEBUG on."""


class InsecureSecretKey(RuntimeError):
    """A production start without a secret key of its own."""


def secret_key(
    configured: str | None, *, debug: bool, production: bool, embedded: Callable[[], str]
) -> str:
    """The site's secret key: ``configured`` (``DJANGO_SECRET_KEY``) when set and not the built-in
    development key; with DEBUG on, the development key; in production (``DATABASE_URL`` set),
    refuse to start; else (the embedded stack) the per-installation key from ``embedded()``."""
    if configured and configured != DEVELOPMENT_SECRET_KEY:
        return configured
    if debug:
        return DEVELOPMENT_SECRET_KEY
    if production:
        raise InsecureSecretKey(
            "refusing to start: DJANGO_SECRET_KEY is unset or the built-in development key; "
            "set it to a long random value (python -c 'import secrets; "
            "print(secrets.token_urlsafe(50))')"
        )
    return embedded()


def embedded_secret_key(path: Path) -> str:
    """A random key kept in ``path`` (created once, mode 0600, atomically: processes starting
    together agree on it)."""
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(50))
    try:
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return path.read_text().strip()


VISIBILITY_SLACK_S = 600
"""Beyond the longest time limit and the hard-limit margin, before Redis redelivers a task."""
HARD_LIMIT_MARGIN_S = 60
"""The hard time limit's margin over the soft one (the task then records ``failed``)."""


def visibility_timeout_s(longest_track_limit_s: int) -> int:
    """The broker visibility timeout: longer than any task may run (the longest track limit, its
    hard-limit margin and slack), so a running task is never redelivered."""
    return longest_track_limit_s + HARD_LIMIT_MARGIN_S + VISIBILITY_SLACK_S
