"""``harness --help`` and every command's ``--help`` start without torch and MONAI (and without
numpy for ``harness --help``): each runs in a fresh interpreter, which reports the modules it
imported. ``quantize``'s method options come from a copy of the method registry's as data, which
must equal the registry's."""

import json
import subprocess
import sys

import pytest

from harness.cli import build_parser
from harness.cli.quantize import METHOD_OPTIONS_PATH, method_option_table

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
    assert _imported(command, "--help").isdisjoint({"torch", "monai"})


def test_the_quantize_parsers_method_options_are_the_registrys():
    assert json.loads(METHOD_OPTIONS_PATH.read_text()) == method_option_table(), (
        "the method registry changed: regenerate with `python -m harness.cli.quantize`"
    )
