"""JSON from an untrusted upload (a checkpoint manifest, a safetensors header, a ``docker save``
manifest), parsed within limits so that no document can cost more than its size: the byte size
is capped before parsing, nesting depth is measured before the recursive parser sees it, and
numbers longer than any real one are refused (Python's ``int`` of a 100,000-digit literal is
quadratic and then raises ``ValueError``; ``NaN`` / ``Infinity`` are not JSON).

Every refusal is an ``UntrustedJsonError`` whose message names the limit; callers turn it into
their own submitter-facing error type.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

MAX_DEPTH = 32
"""Deepest nesting accepted: manifests nest four levels (``layers`` → layer → field → list), a
safetensors header three; far below the parser's recursion limit."""
MAX_NUMBER_CHARS = 40
"""Longest number literal accepted: a float64 written in full (``repr``) takes at most 24
characters and an int64 20."""
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSE = np.frombuffer(b"]}", dtype=np.uint8)


class UntrustedJsonError(ValueError):
    """The document is too large, too deep, holds an absurd number, or is not JSON."""


def nesting_depth(data: bytes) -> int:
    """Deepest ``[``/``{`` nesting of ``data`` outside string literals (linear time, no
    recursion)."""
    codes = np.frombuffer(_STRING.sub(b'""', data), dtype=np.uint8)
    steps = np.isin(codes, _OPEN).astype(np.int64) - np.isin(codes, _CLOSE).astype(np.int64)
    return int(np.cumsum(steps).max(initial=0))


def _number(parse):
    def checked(text: str):
        if len(text) > MAX_NUMBER_CHARS:
            raise UntrustedJsonError(
                f"holds a number of {len(text)} characters; at most {MAX_NUMBER_CHARS} are allowed"
            )
        return parse(text)

    return checked


def _constant(name: str):
    raise UntrustedJsonError(f"holds {name}, which is not JSON")


def loads(data: bytes, *, max_bytes: int) -> Any:
    """Parse ``data`` (UTF-8 JSON) within ``max_bytes``, ``MAX_DEPTH`` and ``MAX_NUMBER_CHARS``;
    raise ``UntrustedJsonError`` with the reason otherwise."""
    if len(data) > max_bytes:
        raise UntrustedJsonError(
            f"is {len(data) / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:g} MiB"
        )
    depth = nesting_depth(data)
    if depth > MAX_DEPTH:
        raise UntrustedJsonError(f"nests {depth} levels deep; the limit is {MAX_DEPTH}")
    try:
        return json.loads(
            data,
            parse_int=_number(int),
            parse_float=_number(float),
            parse_constant=_constant,
        )
    except UntrustedJsonError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UntrustedJsonError(f"is not valid JSON: {error}") from None
