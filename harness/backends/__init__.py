"""Backends: one module each, behind the protocol in ``base.py``; this registry is the one list
everything else derives from (TrackSpec, the CLI, the site's track field, worker queues, accepted
submission kinds, the quantizer container's output).

A module is imported only when its backend is asked for, and the protocol (``base``) only when
``Backend`` or ``OpenedArtifact`` is, so listing names costs nothing. Adding a
backend is one module with a ``Backend`` subclass named ``BACKEND`` plus one line here.

Depends on: ``harness.artifacts``, ``harness.inference``, ``harness.models`` and
``reference_methods.simulator``.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.backends.base import Backend, OpenedArtifact

BACKEND_MODULES: dict[str, str] = {
    "simulated": "harness.backends.simulated",
    "onnxruntime-cpu": "harness.backends.onnxruntime",
    "openvino-cpu": "harness.backends.openvino",
    "tensorrt": "harness.backends.tensorrt",
}
"""Track setting → module whose ``BACKEND`` implements it."""

__all__ = ["BACKEND_MODULES", "Backend", "OpenedArtifact", "backend_names", "get_backend"]


_BASE_NAMES = ("Backend", "OpenedArtifact")
"""Re-exported from ``base`` on first use: it imports the artifact checks (and numpy), which a
command-line parser listing ``backend_names`` does not need."""


def __getattr__(name: str) -> object:
    if name in _BASE_NAMES:
        from harness.backends import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def backend_names() -> tuple[str, ...]:
    return tuple(BACKEND_MODULES)


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; HarnessError naming the known ones otherwise."""
    if name not in BACKEND_MODULES:
        known = ", ".join(BACKEND_MODULES)
        raise HarnessError(f"unknown backend {name!r} (expected one of: {known})")
    return _load(name, BACKEND_MODULES[name])


@cache
def _load(name: str, module: str) -> Backend:
    backend = importlib.import_module(module).BACKEND
    if backend.name != name:
        raise HarnessError(f"{module} implements backend {backend.name!r}, registered as {name!r}")
    return backend
