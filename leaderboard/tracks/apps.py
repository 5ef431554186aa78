from django.apps import AppConfig


class TracksConfig(AppConfig):
    name = "leaderboard.tracks"
    label = "tracks"
