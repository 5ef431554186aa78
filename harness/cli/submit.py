"""``harness submit``: upload a quantized checkpoint or ONNX file to a leaderboard site (and wait,
showing its standing); ``harness cancel``: withdraw a queued one."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from harness.errors import HarnessError


def _token(args: argparse.Namespace) -> str:
    token = args.token or os.environ.get("MEDQUANT_TOKEN")
    if not token:
        raise HarnessError("an API token is needed: --token or MEDQUANT_TOKEN")
    return token


def _print_standing(document: dict) -> None:
    queue = document.get("queue") or {}
    lines = "; ".join(queue.get("lines", []))
    print(f"submission {document['id']} {document['status']}" + (f": {lines}" if lines else ""))


def cmd_submit(args: argparse.Namespace) -> None:
    from harness.client import submit, wait

    token = _token(args)
    created = submit(
        args.url,
        token,
        args.track,
        args.method,
        Path(args.artifact),
        args.description,
        hyperparameters=args.hyperparameters,
        calibration_cases=args.calibration_cases,
        paper_url=args.paper_url,
        code_url=args.code_url,
    )
    print(f"submission {created['id']} {created['status']} on {created['track']}")
    if args.wait:
        final = wait(args.url, token, created["id"], args.timeout, on_change=_print_standing)
        detail = (
            final["error"] or f"mean DSC {final['mean_dsc']:.4f}, mean NSD {final['mean_nsd']:.4f}"
        )
        print(f"submission {final['id']} {final['status']}: {detail}")
        if final["status"] != "done":
            raise HarnessError(f"submission {final['id']} {final['status']}")


def cmd_cancel(args: argparse.Namespace) -> None:
    from harness.client import cancel

    cancelled = cancel(args.url, _token(args), args.id)
    print(f"submission {cancelled['id']} {cancelled['status']} (not counted in the quota)")


def register(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "submit", help="submit a quantized checkpoint or ONNX file to a leaderboard site (REST API)"
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="site address")
    p.add_argument("--token", help="personal API token (default: $MEDQUANT_TOKEN)")
    p.add_argument("--track", required=True, help="track slug")
    p.add_argument("--method", required=True, help="method name shown on the leaderboard")
    p.add_argument("--description", default="")
    p.add_argument(
        "--hyperparameters",
        default="",
        help="the method's settings as a JSON object, e.g. '{\"damp\": 0.01}'",
    )
    p.add_argument("--calibration-cases", type=int, help="number of calibration cases used")
    p.add_argument("--paper-url", default="", help="the method's paper")
    p.add_argument("--code-url", default="", help="the method's code")
    p.add_argument(
        "--checkpoint",
        dest="artifact",
        required=True,
        help="checkpoint folder (manifest.json + weights.safetensors), checkpoint .zip or .onnx",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="poll until the evaluation finishes, printing its queue position and steps",
    )
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait at most")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("cancel", help="cancel a queued submission of yours (REST API)")
    p.add_argument("id", type=int, help="submission id")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="site address")
    p.add_argument("--token", help="personal API token (default: $MEDQUANT_TOKEN)")
    p.set_defaults(func=cmd_cancel)
