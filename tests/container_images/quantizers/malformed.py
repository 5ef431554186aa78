"""Broken: writes a checkpoint whose manifest and weights are not what the protocol asks for."""

import json
from pathlib import Path

Path("/output/manifest.json").write_text(json.dumps({"format": "my-own-format", "layers": {}}))
Path("/output/weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
