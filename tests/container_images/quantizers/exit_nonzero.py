"""Hostile (or just broken): reports a failure and exits with status 3."""

import sys

print("calibration diverged", file=sys.stderr)
sys.exit(3)
