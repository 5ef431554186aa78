"""A submission's test cases scored in chunks, each chunk on whichever worker takes it, and the
result document assembled from all of them — identical, case for case, to the serial run's.

Each chunk opens (verifies) the artifact and scores its cases with the network the serial run
would use (the per-case figures depend only on the network and the case); the chunk's
``CaseMetrics`` travel as JSON. The assembly (``evaluate_untrusted(..., cases=...)``) verifies
the artifact again, orders the cases as the track lists them, and measures efficiency in one
process, as the latency protocol needs. Uploads are run in a child process per chunk, as the
serial evaluation runs them (``harness.entry.isolation``)."""

from __future__ import annotations

from collections.abc import Sequence

from harness.entry.isolation import run_isolated
from harness.entry.upload import Submission, open_submission
from harness.scoring.evaluation import CaseMetrics, StageTimer
from harness.track.loaded import LoadedTrack

CHUNK_STAGE = "inferring test cases (a chunk)"
"""The progress step a chunk reports while it infers its cases."""


def case_chunks(case_ids: Sequence[str], cases_per_chunk: int) -> list[list[str]]:
    """``case_ids`` cut in order into chunks of at most ``cases_per_chunk`` (≥ 1)."""
    if cases_per_chunk < 1:
        raise ValueError(f"a chunk holds at least one case, not {cases_per_chunk}")
    ids = list(case_ids)
    return [ids[i : i + cases_per_chunk] for i in range(0, len(ids), cases_per_chunk)]


def verify_untrusted(track: LoadedTrack, submission: Submission) -> dict:
    """The precision read from an uploaded artifact, verified against the track in a child
    process (``SubmissionError`` when it is refused, as ``open_submission`` refuses it): what
    the chunks then score."""
    track.warm(fp32_run=False)

    def work(_stage) -> dict:
        return {"precision": open_submission(track, submission, StageTimer()).precision}

    return run_isolated(work, engine=track.spec.backend)["precision"]


def score_cases(
    track: LoadedTrack, submission: Submission, case_ids: Sequence[str]
) -> list[CaseMetrics]:
    """The per-case metrics of ``submission`` on the test cases ``case_ids`` of ``track``."""
    opened = open_submission(track, submission, StageTimer())
    run = track.run(opened.network, False, submission.label, CHUNK_STAGE, case_ids=case_ids)
    return run.cases


def score_untrusted_cases(
    track: LoadedTrack, submission: Submission, case_ids: Sequence[str]
) -> list[CaseMetrics]:
    """``score_cases`` for an uploaded artifact, in a child process: an engine crash is the
    artifact's fault (``SubmissionError``). What verifying the artifact reads (the calibration
    patches, the reference graph) is computed first, here, and kept for the next chunk; the
    FP32 run is not needed."""
    track.warm(fp32_run=False)

    def work(_stage) -> dict:
        return {"cases": [c.to_json() for c in score_cases(track, submission, case_ids)]}

    result = run_isolated(work, engine=track.spec.backend)
    return [CaseMetrics.from_json(c) for c in result["cases"]]
