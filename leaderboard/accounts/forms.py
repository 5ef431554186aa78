from django import forms
from django.contrib.auth.forms import UserCreationForm
from django.db import transaction

from leaderboard.accounts.models import Team


class SignupForm(UserCreationForm):
    """Username + password, optionally founding a new team."""

    email = forms.EmailField(required=False)
    team = forms.CharField(
        max_length=80, required=False, help_text="optional: create a team you submit for"
    )

    class Meta(UserCreationForm.Meta):
        fields = ("username", "email")

    def clean_team(self) -> str:
        name = self.cleaned_data["team"].strip()
        if name and Team.objects.filter(name__iexact=name).exists():
            raise forms.ValidationError(f"team {name!r} already exists; ask a member to add you")
        return name

    @transaction.atomic
    def save(self, commit: bool = True):
        user = super().save(commit=True)
        if self.cleaned_data["team"]:
            Team.objects.create(name=self.cleaned_data["team"]).members.add(user)
        return user


class TokenForm(forms.Form):
    name = forms.CharField(max_length=60, help_text="e.g. the machine it is used from")
