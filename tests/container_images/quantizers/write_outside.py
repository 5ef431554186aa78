"""Hostile: writes outside /output (the image, /input), then to /output so a success shows."""

import sys
from pathlib import Path

for target in ("/input/model.safetensors", "/opt/medquant/planted.txt", "/etc/planted"):
    try:
        Path(target).write_text("planted\n")
        print(f"wrote {target}")
    except OSError as error:
        print(f"refused: {error}", file=sys.stderr)
        last = error
Path("/output/done.txt").write_text("ok\n")
raise last
