"""``harness`` command line: demo data, training, reference PTQ methods, evaluation,
MedQuanBench-style studies, layer sensitivity and activation analysis.

One module per command group; each registers its sub-commands and imports what it runs only
when it runs, so ``harness --help`` starts without torch.

Depends on: ``harness.analysis``, ``harness.entry``, ``harness.containers``, ``harness.track``,
``harness.backends``, ``harness.artifacts``, ``harness.scoring``, ``harness.models``,
``harness.inference``, ``harness.data``, ``harness.demo``, ``harness.client``,
``reference_methods.methods``, ``reference_methods.simulator``.
"""

from __future__ import annotations

import argparse
import sys

from harness.cli import analysis, data, evaluate, graph, models, quantize, submit, train
from harness.errors import HarnessError


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (no command's heavy imports: see ``tests/test_cli_startup``)."""
    parser = argparse.ArgumentParser(prog="harness", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    data.register(sub, common)
    train.register(sub, common)
    models.register(sub, common)
    quantize.register(sub, common)
    graph.register(sub, common)
    evaluate.register(sub, common)
    analysis.register(sub, common)
    submit.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (HarnessError, ValueError) as err:  # ValueError: a method's or scheme's option
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
