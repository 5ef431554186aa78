"""Tracks: ``TrackSpec`` (the plain, versioned description a track hands the harness) and
``LoadedTrack`` (its dataset parsed and FP32 model loaded, reused across submissions).

Depends on: ``harness.backends``, ``harness.artifacts``, ``harness.scoring``, ``harness.models``,
``harness.inference``, ``harness.data``.
"""
