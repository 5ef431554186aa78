"""Hostile: writes to /scratch (a VOLUME its image declares) until the write fails, then says
how much it wrote and exits 3."""

import sys

block, written = b"\0" * (1 << 20), 0
try:
    with open("/scratch/fill", "wb") as out:
        while written < 10 * 1000**3:
            out.write(block)
            out.flush()
            written += len(block)
except OSError as error:
    print(f"stopped: {error.strerror}")
print(f"wrote {written} bytes to /scratch")
sys.exit(3)
