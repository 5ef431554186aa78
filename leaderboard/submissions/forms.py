"""The web submit form; its checks are those of ``intake.accept`` reported per field."""

from django import forms

from leaderboard.submissions.intake import UPLOAD_KINDS, accepted_kinds
from leaderboard.submissions.models import Kind
from leaderboard.tracks.models import Track


class SubmitForm(forms.Form):
    track = forms.ModelChoiceField(queryset=Track.objects.public(), to_field_name="slug")
    kind = forms.ChoiceField(
        choices=[(k.value, k.label) for k in UPLOAD_KINDS], initial=Kind.CHECKPOINT
    )
    method = forms.CharField(
        max_length=80,
        widget=forms.TextInput(attrs={"list": "method-names"}),
        help_text="method name shown on the leaderboard: a reference method's, or your own",
    )
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    hyperparameters = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        required=False,
        help_text='JSON object of the method\'s settings, e.g. {"damp": 0.01, "block_size": 128}',
    )
    calibration_cases = forms.IntegerField(
        required=False, min_value=0, help_text="number of calibration cases the method used"
    )
    paper_url = forms.URLField(required=False, assume_scheme="https")
    code_url = forms.URLField(required=False, assume_scheme="https")
    artifact = forms.FileField(
        required=False,
        help_text="checkpoint .zip (manifest.json + weights.safetensors), .onnx, or a quantizer "
        "container image .tar (docker save)",
    )
    manifest = forms.FileField(required=False, help_text="or: manifest.json …")
    weights = forms.FileField(required=False, help_text="… and weights.safetensors")
    image = forms.CharField(
        required=False,
        max_length=300,
        help_text="or, for a container: its registry reference (where a registry is configured)",
    )

    def __init__(self, *args, **kwargs) -> None:
        """The kind offers only what some public track (or the track asked for, ``?track=``)
        takes: no quantizer containers where the site runs none."""
        super().__init__(*args, **kwargs)
        slug = self.initial.get("track")
        tracks = Track.objects.public()
        if slug:
            tracks = tracks.filter(slug=slug)
        taken = {kind for track in tracks for kind in accepted_kinds(track)}
        self.fields["kind"].choices = [(k.value, k.label) for k in UPLOAD_KINDS if k in taken]
