"""URL routes of the leaderboard site."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from leaderboard import request_errors
from leaderboard.accounts import views as accounts
from leaderboard.submissions import views as submissions
from leaderboard.tracks import study_views
from leaderboard.tracks import views as tracks

urlpatterns = [
    path("", tracks.home, name="home"),
    # browsers ask for /favicon.ico whatever the page links: the site's icon
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("tracks/<slug:slug>/", tracks.track_detail, name="track"),
    path("tracks/<slug:slug>/compare/", tracks.compare_entries, name="compare"),
    path(
        "tracks/<slug:slug>/calibration-bundle.zip",
        tracks.calibration_bundle,
        name="calibration-bundle",
    ),
    path("tracks/<slug:slug>/model/<str:name>", tracks.model_file, name="model-file"),
    path(
        "tracks/<slug:slug>/calibration/<str:case_id>.nii.gz",
        tracks.calibration_case,
        name="calibration-case",
    ),
    path("study/", study_views.cross_model_study, name="study"),
    path("study/<slug:slug>/", study_views.model_study, name="study-model"),
    path("methods/<str:name>/", study_views.method_page, name="method"),
    path("submit/", submissions.submit, name="submit"),
    path("submissions/", submissions.my_submissions, name="my-submissions"),
    path("submissions/<int:pk>/", submissions.submission_detail, name="submission"),
    path("submissions/<int:pk>/artifact", submissions.baseline_artifact, name="baseline-artifact"),
    path("submissions/<int:pk>/status", submissions.submission_status, name="submission-status"),
    path("submissions/<int:pk>/cancel", submissions.cancel_submission, name="cancel-submission"),
    path("tokens/", accounts.tokens, name="tokens"),
    path("tokens/<int:pk>/revoke", accounts.revoke_token, name="revoke-token"),
    path("signup/", accounts.signup, name="signup"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/", include("leaderboard.api.urls")),
    path("admin/", admin.site.urls),
]

handler400 = request_errors.bad_request
