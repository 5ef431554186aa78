"""Honest but trivial: writes one file to /output (the runner's "still serving" probe)."""

from pathlib import Path

Path("/output/done.txt").write_text("ok\n")
print("wrote /output/done.txt")
