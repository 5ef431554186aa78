"""An untrusted artifact is opened and run in a child process: an engine that crashes on a
hostile file (OpenVINO dies of SIGSEGV on a GatherND index past its data, say) takes down the
child, not the worker, and the crash is the artifact's fault — a ``SubmissionError`` naming the
engine and the signal.

The child is forked, so it starts with the worker's loaded track (FP32 run, calibration patches,
FP32 export computed beforehand in the parent, where they stay cached). It talks to the parent
through a pipe in JSON lines only — never pickle: what comes back from a process that ran a
hostile file is data to parse, not objects to rebuild — ``["stage", name]``,
``["progress", [stage, done, total]]`` (re-reported to the parent's ``harness.progress``
listener) and one closing ``["result", document]``, ``["rejected", message]``,
``["memory", message]`` or ``["error", message]`` (``INFRASTRUCTURE_ERRORS`` and what is not an
``Exception``; any other exception is a rejection, ``failure_message``). The child inherits the
parent's resource limits (the evaluation's address-space cap) and is killed when the parent is
interrupted (a time limit)."""

from __future__ import annotations

import json
import os
import signal
import traceback
from collections.abc import Callable

from harness.errors import SubmissionError
from harness.progress import report, reporting

INFRASTRUCTURE_ERRORS = (OSError,)
"""Failures of the worker's host (disk, pipes, files), not of the artifact: they end ``failed``
(``ChildError``) and are not counted in the quota. Any other exception raised while verifying or
running an untrusted artifact is a rejection naming it: a file the harness cannot evaluate is
refused, as a crash of its engine is."""
Stage = Callable[[str], None]
Work = Callable[[Stage], dict]


class ChildError(RuntimeError):
    """The evaluation failed in the child for a reason that is not the artifact's (the message
    is the child's exception, for the maintainers)."""


def run_isolated(work: Work, *, engine: str, on_stage: Stage | None = None) -> dict:
    """``work(on_stage)`` run in a forked child; its result document. Raises ``SubmissionError``
    when the artifact is at fault (the child said so, or it died of a signal), ``MemoryError``
    when the child ran out of memory, ``ChildError`` otherwise."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _child(work, os.fdopen(write_fd, "w"), engine)
    os.close(write_fd)
    closing: list = ["error", "the evaluation ended without a result"]
    try:
        with os.fdopen(read_fd) as pipe:
            for line in pipe:
                kind, payload = json.loads(line)
                if kind == "stage":
                    if on_stage is not None:
                        on_stage(str(payload))
                elif kind == "progress":
                    stage, done, total = payload
                    report(str(stage), int(done), int(total))
                else:
                    closing = [kind, payload]
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        raise SubmissionError(
            f"the {engine} engine crashed running this artifact ({name}): the file makes the "
            "engine fail, so it cannot be scored"
        )
    kind, payload = closing
    if kind == "result":
        return payload
    if kind == "rejected":
        raise SubmissionError(payload)
    if kind == "memory":
        raise MemoryError(payload)
    raise ChildError(payload)


def failure_message(engine: str, error: Exception) -> str:
    """What a submitter reads when verifying or running their artifact raised ``error``."""
    return (
        f"verifying or running this artifact on {engine} failed: {type(error).__name__}: "
        f"{error} (a file the harness cannot evaluate is refused; if you believe it is valid, "
        "tell the maintainers: the traceback is in the worker's log)"
    )


def _child(work: Work, pipe, engine: str) -> None:
    """Run ``work`` and send its outcome; exit without running the parent's exit handlers.
    Torch runs on one thread here: an OpenMP team the parent may have started does not exist
    after a fork, and a parallel region would wait for it forever (as PyTorch's DataLoader
    workers, which are forked too)."""
    import faulthandler

    import torch

    torch.set_num_threads(1)
    faulthandler.disable()  # a crash is reported by the parent, not as a traceback in the log

    def send(kind: str, payload) -> None:
        pipe.write(json.dumps([kind, payload]) + "\n")
        pipe.flush()

    try:
        with reporting(lambda stage, done, total: send("progress", [stage, done, total])):
            send("result", work(lambda name: send("stage", name)))
    except SubmissionError as error:
        send("rejected", str(error))
    except MemoryError as error:
        send("memory", str(error))
    except INFRASTRUCTURE_ERRORS as error:
        send("error", f"{type(error).__name__}: {error}")
    except Exception as error:  # noqa: BLE001 — the artifact made verifying or running it fail
        traceback.print_exc()  # for the maintainers, in the worker's log
        send("rejected", failure_message(engine, error))
    except BaseException as error:  # noqa: BLE001 — reported to the parent, which decides
        send("error", f"{type(error).__name__}: {error}")
    finally:
        pipe.close()
        os._exit(0)
