"""REST API (DRF): tracks, leaderboards, one-call submit with a token, status, results."""
