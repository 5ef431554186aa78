"""``harness train``: train a reference model from its ``model.json`` spec."""

from __future__ import annotations

import argparse
import time


def cmd_train(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from harness.data.dataset import load_dataset
    from harness.models.reference import read_spec, save_reference_model
    from harness.models.training import TrainConfig, load_training_volumes, train

    spec = read_spec(args.spec)
    dataset = load_dataset(args.dataset)
    config = TrainConfig.from_overrides(
        spec.training,
        iterations=args.iterations,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
    )
    cases = dataset.split(args.split)
    volumes = load_training_volumes(cases, dataset.labels, spec.preprocessing)
    start = time.perf_counter()
    model = train(spec, volumes, config, progress=not args.quiet)
    record = config.to_dict() | {
        "dataset": dataset.name,
        "split": args.split,
        "cases": len(cases),
        "seconds": round(time.perf_counter() - start, 1),
    }
    save_reference_model(model, replace(spec, training=record), args.out)
    print(f"saved {spec.name} to {args.out}")


def register(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train", parents=[common], help="train a reference model from a model.json spec"
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--spec", required=True, help="model.json (or a folder holding one)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--split", default="train")
    p.add_argument("--iterations", type=int, help="default: the spec's training record, else 1200")
    p.add_argument("--batch-size", type=int, help="default: the spec's training record, else 2")
    p.add_argument("--lr", type=float, help="default: the spec's training record, else 2e-3")
    p.add_argument("--seed", type=int, help="default: the spec's training record, else 0")
    p.set_defaults(func=cmd_train)
