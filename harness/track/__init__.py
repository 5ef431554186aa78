"""Tracks: ``TrackSpec`` (the plain, versioned description a track hands the harness) and
``LoadedTrack`` (its dataset parsed and FP32 model loaded, reused across submissions)."""
