from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

from leaderboard.api import views

urlpatterns = [
    path("", views.api_root, name="api-root"),
    path("v1/", views.api_root, name="api-root-v1"),
    path("v1/tracks/", views.track_list, name="api-tracks"),
    path("v1/tracks/<slug:slug>/", views.track_detail, name="api-track"),
    path("v1/tracks/<slug:slug>/leaderboard/", views.leaderboard, name="api-leaderboard"),
    path("v1/tracks/<slug:slug>/compare/", views.compare_entries, name="api-compare"),
    path("v1/submissions/", views.submissions, name="api-submissions"),
    path("v1/submissions/<int:pk>/", views.submission_detail, name="api-submission"),
    path("v1/submissions/<int:pk>/cancel/", views.cancel_submission, name="api-cancel"),
    path("v1/submissions/<int:pk>/result/", views.submission_result, name="api-result"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-docs"),
]
