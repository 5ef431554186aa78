"""``harness --help`` and every command's ``--help`` start without torch and MONAI (and without
numpy for ``harness --help``): each runs in a fresh interpreter, which reports the modules it
imported. ``quantize --help`` lists every registered method's options, read from the config
dataclasses of method modules that import torch: it is held to no MONAI only."""

import json
import subprocess
import sys

import pytest

from harness.cli import build_parser

HEAVY = ("torch", "monai", "numpy", "scipy", "nibabel", "onnx", "onnxruntime", "openvino")
PROBE = """
import json, sys
from harness.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def _imported(*argv: str) -> set[str]:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "usage: harness" in completed.stdout
    return set(json.loads(completed.stdout.splitlines()[-1])) & set(HEAVY)


def _commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(sub.choices)


def test_harness_help_imports_no_numerical_library():
    assert _imported("--help") == set()


@pytest.mark.parametrize("command", _commands())
def test_a_commands_help_imports_neither_torch_nor_monai(command):
    imported = _imported(command, "--help")
    assert "monai" not in imported
    if command != "quantize":
        assert "torch" not in imported
