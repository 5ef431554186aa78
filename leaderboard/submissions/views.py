"""Submitting through the web form, one submission's page, and the user's own submissions."""

from __future__ import annotations

import shlex

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models.fields.json import KeyTextTransform
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from harness.cli.quantize import quantize_command
from leaderboard.submissions.forms import SubmitForm
from leaderboard.submissions.intake import accept
from leaderboard.submissions.metadata import metadata, method_names
from leaderboard.submissions.models import Kind, Status, Submission
from leaderboard.submissions.queueing import cancel, queue_state
from leaderboard.throttles import SubmitThrottle, refused
from leaderboard.tracks.phases import shown_result
from leaderboard.tracks.views import bundle_folder

SUBMISSIONS = "submissions (through the API and this form together)"


@login_required
def submit(request):
    """The submission form; a POST counts against the API's submission rate (``SubmitThrottle``)
    and is refused (429, with the reason, before the upload is read) once it is used up."""
    if request.method == "POST":
        reason = refused(SubmitThrottle(), request, SUBMISSIONS)
        if reason is not None:
            context = {"form": SubmitForm(initial=request.GET.dict()), "refused": reason,
                       "method_names": method_names()}  # fmt: skip
            return render(request, "submissions/submit.html", context, status=429)
    form = SubmitForm(request.POST or None, request.FILES or None, initial=request.GET.dict())
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            submission = accept(
                request.user,
                track=data["track"],
                kind=data["kind"],
                method=data["method"],
                description=data["description"],
                paper_url=data["paper_url"],
                code_url=data["code_url"],
                archive=data["artifact"],
                manifest=data["manifest"],
                weights=data["weights"],
                image=data["image"],
                metadata=metadata(data["hyperparameters"], data["calibration_cases"]),
            )
        except ValidationError as error:
            for field, problems in error.message_dict.items():
                form.add_error(field if field in form.fields else None, problems)
        else:
            messages.success(request, f"submission #{submission.pk} queued for evaluation")
            return redirect("submission", pk=submission.pk)
    context = {"form": form, "method_names": method_names()}
    return render(request, "submissions/submit.html", context)


def visible_submission(request, pk: int) -> tuple[Submission, bool]:
    """The submission and whether the viewer owns it (maintainers count as owners); others see
    only finished entries that are neither hidden nor disqualified (README: those stay visible
    to their owner and to maintainers only)."""
    submission = get_object_or_404(
        Submission.objects.select_related("track", "team", "user", "evaluation"), pk=pk
    )
    owner = request.user.is_authenticated and (
        submission.user_id == request.user.pk or request.user.is_staff
    )
    public = (
        submission.status == Status.DONE and not submission.hidden and not submission.disqualified
    )
    if not (owner or public):
        raise Http404("no such submission")
    return submission, owner


def submission_detail(request, pk: int):
    submission, owner = visible_submission(request, pk)
    evaluation = getattr(submission, "evaluation", None)
    versions = list(
        submission.versions.order_by("version").values(
            "version", "created_at", "mean_dsc", "mean_nsd", "dsc_drop_pct", "gate_passed",
            harness_version=KeyTextTransform("harness_version", "result__environment"),
        )
    )  # fmt: skip
    result = evaluation and shown_result(
        evaluation.result, submission.track, staff=request.user.is_staff
    )
    context = {"submission": submission, "owner": owner, "evaluation": evaluation,
               "result": result,
               "versions": versions, "reproduction": reproduction(submission),
               "queue": queue_state(submission)}  # fmt: skip
    return render(request, "submissions/detail.html", context)


def reproduction(submission: Submission) -> dict | None:
    """How to reproduce a baseline offline: the ``harness quantize`` command that makes its
    artifact from the track's calibration bundle and FP32 model folder, the harness version
    that made it and the artifact's digest; None for what is not a quantized-checkpoint
    baseline."""
    if not (submission.is_baseline and submission.kind == Kind.SCHEME):
        return None
    if not submission.track.takes_checkpoints:
        return None
    evaluation = getattr(submission, "evaluation", None)
    result = evaluation.result if evaluation else {}
    folder = bundle_folder(submission.track)
    argv = quantize_command(
        submission.reference_method or "rtn",
        submission.scheme,
        None,  # baselines run with the method's default options (``seeding.queue_baselines``)
        dataset=folder,
        model="model",
        out="checkpoint",
    )
    return {
        "command": shlex.join(argv),
        "argv": argv,
        "bundle": folder,
        "harness_version": result.get("environment", {}).get("harness_version"),
        "digest": evaluation.artifact_digest if evaluation else "",
    }


def baseline_artifact(request, pk: int):
    """The stored artifact a baseline was scored as (a checkpoint zip or an ONNX file); a hidden
    or disqualified baseline's only to maintainers (``visible_submission``)."""
    submission, _ = visible_submission(request, pk)
    if not (submission.is_baseline and submission.status == Status.DONE):
        raise Http404("no finished baseline with this id")
    if not submission.artifact:
        raise Http404("this baseline keeps no artifact (it is the FP32 reference model)")
    name = submission.artifact.name.rsplit("/", 1)[-1]
    return FileResponse(submission.artifact.open("rb"), as_attachment=True, filename=name)


def submission_status(request, pk: int):
    """Live status and standing (polled by the page's script)."""
    submission, _ = visible_submission(request, pk)
    state = queue_state(submission)
    return JsonResponse(
        {
            "id": submission.pk,
            "status": submission.status,
            "error": submission.error,
            "pending": submission.is_pending,
            "queue": state.as_dict() if state else None,
        }  # fmt: skip
    )


@login_required
@require_POST
def cancel_submission(request, pk: int):
    """The owner cancels a queued submission (it then does not count against the quota)."""
    submission = get_object_or_404(Submission, pk=pk, user=request.user)
    if cancel(submission.pk):
        messages.success(request, f"submission #{pk} cancelled; it does not count in your quota")
    else:
        messages.error(
            request,
            f"submission #{pk} is {Submission.objects.get(pk=pk).status}: only a queued "
            "submission can be cancelled",
        )
    return redirect("submission", pk=pk)


@login_required
def my_submissions(request):
    submissions = Submission.objects.filter(user=request.user).select_related("track", "evaluation")
    pending = any(s.is_pending for s in submissions)
    return render(
        request, "submissions/mine.html", {"submissions": submissions, "pending": pending}
    )
