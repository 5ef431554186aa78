"""Sign-up and the personal API token page."""

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from leaderboard.accounts.forms import SignupForm, TokenForm
from leaderboard.accounts.models import ApiToken
from leaderboard.throttles import SignupThrottle, refused


def signup(request):
    """Sign-up form; attempts (POST) are limited per client address (``SignupThrottle``), the
    one over the rate is refused (429) with the reason."""
    if request.method == "POST":
        reason = refused(SignupThrottle(), request, "sign-ups from your address")
        if reason is not None:
            context = {"form": SignupForm(), "refused": reason}
            return render(request, "accounts/signup.html", context, status=429)
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user)
        messages.success(request, f"welcome, {user.username}")
        return redirect("home")
    return render(request, "accounts/signup.html", {"form": form})


@login_required
def tokens(request):
    form = TokenForm(request.POST or None)
    raw = None
    if request.method == "POST" and form.is_valid():
        _, raw = ApiToken.issue(request.user, form.cleaned_data["name"])
        form = TokenForm()
    return render(
        request,
        "accounts/tokens.html",
        {"form": form, "raw": raw, "tokens": request.user.api_tokens.all()},
    )


@login_required
@require_POST
def revoke_token(request, pk: int):
    token = get_object_or_404(ApiToken, pk=pk, user=request.user, revoked_at__isnull=True)
    token.revoke()
    messages.success(request, f"token {token.name} revoked")
    return redirect("tokens")
