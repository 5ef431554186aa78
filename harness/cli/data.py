"""``harness demo`` and ``harness make-phantoms``: demo data and synthetic datasets."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness.data.phantom_sizes import PHANTOM_SIZES


def cmd_demo(args: argparse.Namespace) -> None:
    from harness.demo import write_demo

    start = time.perf_counter()
    paths = write_demo(Path(args.out), progress=not args.quiet)
    for name, path in paths.items():
        print(f"{name:<10} {path}")
    print(f"demo written in {time.perf_counter() - start:.1f} s")


def cmd_make_phantoms(args: argparse.Namespace) -> None:
    from harness.data.demo import make_phantoms

    out = make_phantoms(
        Path(args.out), args.cases, args.seed, progress=not args.quiet, size=args.size
    )
    print(f"wrote {args.cases} {args.size} phantom cases to {out}")


def register(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo", parents=[common], help="write the phantom dataset and the shipped demo models"
    )
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "make-phantoms",
        parents=[common],
        help="write a synthetic abdominal CT dataset (MSD layout)",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--cases", type=int, default=28)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--size",
        choices=PHANTOM_SIZES,
        default="demo",
        help="demo (~110x110x35 voxels, 6 classes) or clinical (512x512x200 at 0.8x0.8x2.5 mm, "
        "14 classes)",
    )
    p.set_defaults(func=cmd_make_phantoms)
