"""Submitting through the web form, one submission's page, and the user's own submissions."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models.fields.json import KeyTextTransform
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render

from leaderboard.submissions.forms import SubmitForm
from leaderboard.submissions.intake import accept
from leaderboard.submissions.models import Status, Submission


@login_required
def submit(request):
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
            )
        except ValidationError as error:
            for field, problems in error.message_dict.items():
                form.add_error(field if field in form.fields else None, problems)
        else:
            messages.success(request, f"submission #{submission.pk} queued for evaluation")
            return redirect("submission", pk=submission.pk)
    return render(request, "submissions/submit.html", {"form": form})


def visible_submission(request, pk: int) -> tuple[Submission, bool]:
    """The submission and whether the viewer owns it; others see only finished, shown entries."""
    submission = get_object_or_404(
        Submission.objects.select_related("track", "team", "user", "evaluation"), pk=pk
    )
    owner = request.user.is_authenticated and (
        submission.user_id == request.user.pk or request.user.is_staff
    )
    public = submission.status == Status.DONE and not submission.hidden
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
    context = {"submission": submission, "owner": owner, "evaluation": evaluation,
               "versions": versions}  # fmt: skip
    return render(request, "submissions/detail.html", context)


def submission_status(request, pk: int):
    """Live status (polled by the page's script)."""
    submission, _ = visible_submission(request, pk)
    return JsonResponse(
        {
            "id": submission.pk,
            "status": submission.status,
            "error": submission.error,
            "pending": submission.is_pending,
        }  # fmt: skip
    )


@login_required
def my_submissions(request):
    submissions = Submission.objects.filter(user=request.user).select_related("track", "evaluation")
    pending = any(s.is_pending for s in submissions)
    return render(
        request, "submissions/mine.html", {"submissions": submissions, "pending": pending}
    )
