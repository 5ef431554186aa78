"""Client of the leaderboard's REST API (stdlib HTTP only; the harness never imports Django).

``submit`` uploads a quantized checkpoint folder (manifest.json + weights.safetensors), a
checkpoint zip or an ONNX file in one multipart call authenticated by a personal token;
``wait`` polls the submission until it finishes, reporting each change of its standing (status,
queue position, step); ``cancel`` withdraws a queued one.

Depends on: ``harness.artifacts`` (the files an artifact kind consists of).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from harness.artifacts.checkpoint.storage import MANIFEST_NAME, WEIGHTS_NAME
from harness.errors import HarnessError

FINISHED = ("done", "failed", "rejected", "cancelled")


class ApiError(HarnessError):
    """The server refused a request; the message is the server's error message."""


def _multipart(fields: dict[str, str], files: dict[str, Path]) -> tuple[bytes, str]:
    """RFC 7578 form-data body and its content type."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        parts.append(head.encode() + value.encode() + b"\r\n")
    for name, path in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(head.encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _request(
    url: str, token: str | None, data: bytes | None = None, content_type: str = ""
) -> dict:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Token {token}"
    if content_type:
        headers["Content-Type"] = content_type
    try:
        with urlopen(Request(url, data=data, headers=headers), timeout=120) as response:
            return json.loads(response.read())
    except HTTPError as error:
        body = error.read()
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = body.decode(errors="replace")[:300]
        raise ApiError(f"HTTP {error.code}: {message}") from error
    except URLError as error:
        raise ApiError(f"cannot reach {url}: {error.reason}") from error


def artifact_files(path: Path) -> tuple[str, dict[str, Path]]:
    """(kind, form files) of a checkpoint folder, a checkpoint zip or an ONNX file."""
    path = Path(path)
    if path.is_dir():
        missing = [n for n in (MANIFEST_NAME, WEIGHTS_NAME) if not (path / n).is_file()]
        if missing:
            raise HarnessError(f"{path} is not a checkpoint folder: missing {', '.join(missing)}")
        return "checkpoint", {"manifest": path / MANIFEST_NAME, "weights": path / WEIGHTS_NAME}
    if path.suffix == ".zip":
        return "checkpoint", {"artifact": path}
    if path.suffix == ".onnx":
        return "onnx", {"artifact": path}
    raise HarnessError(f"{path}: expected a checkpoint folder, a .zip or an .onnx file")


def submit(
    url: str,
    token: str,
    track: str,
    method: str,
    artifact: Path,
    description: str = "",
    *,
    hyperparameters: str = "",
    calibration_cases: int | None = None,
    paper_url: str = "",
    code_url: str = "",
) -> dict:
    """Upload one submission with its metadata (``hyperparameters``: a JSON object as text);
    returns its status document (with ``id``)."""
    kind, files = artifact_files(artifact)
    fields = {
        "track": track,
        "kind": kind,
        "method": method,
        "description": description,
        "hyperparameters": hyperparameters,
        "paper_url": paper_url,
        "code_url": code_url,
    }
    if calibration_cases is not None:
        fields["calibration_cases"] = str(calibration_cases)
    body, content_type = _multipart(fields, files)
    return _request(f"{url.rstrip('/')}/api/v1/submissions/", token, body, content_type)


def status(url: str, token: str | None, submission_id: int) -> dict:
    return _request(f"{url.rstrip('/')}/api/v1/submissions/{submission_id}/", token)


def cancel(url: str, token: str, submission_id: int) -> dict:
    """Cancel a queued submission of yours; its status document (ApiError once it started)."""
    return _request(f"{url.rstrip('/')}/api/v1/submissions/{submission_id}/cancel/", token, b"")


def standing(document: dict) -> tuple:
    """What of a status document is news to a waiting user: the status, the queue position and
    the step reported (not the estimate, which moves with the clock)."""
    queue = document.get("queue") or {}
    return (document["status"], queue.get("position"), queue.get("stage"), queue.get("done"))


def wait(
    url: str,
    token: str | None,
    submission_id: int,
    timeout_s: float,
    poll_s: float = 2.0,
    on_change: Callable[[dict], None] | None = None,
) -> dict:
    """Poll until the submission finishes, calling ``on_change`` with the status document
    whenever its ``standing`` changes; raises ApiError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    seen = None
    while True:
        current = status(url, token, submission_id)
        if on_change is not None and standing(current) != seen:
            seen = standing(current)
            on_change(current)
        if current["status"] in FINISHED:
            return current
        if time.monotonic() > deadline:
            raise ApiError(
                f"submission {submission_id} still {current['status']} after {timeout_s} s"
            )
        time.sleep(poll_s)
