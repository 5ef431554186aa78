"""Reading maintainer-provided PyTorch checkpoints without executing them: ``torch.load`` with
``weights_only=True`` and only the extra types nnU-Net checkpoints hold (numpy scalars in the
training log), then the state dict of tensors taken out."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from harness.errors import ModelImportError

#: Beyond what ``weights_only`` always allows (tensors, containers, numbers, strings,
#: ``torch.device``): numpy scalars and dtypes, which nnU-Net's logger stores for losses and Dice
#: (pickled as ``numpy.core.multiarray.scalar`` by numpy 1, ``numpy._core…`` by numpy 2).
ALLOWED_GLOBALS = [
    np._core.multiarray.scalar,
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    np.dtype,
    *(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")),
]


def load_checkpoint(path: Path) -> object:
    """The unpickled checkpoint at ``path`` (weights_only, allow-listed types only)."""
    if not path.is_file():
        raise ModelImportError(f"missing checkpoint {path}")
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0]
        raise ModelImportError(
            f"{path.name} holds objects outside the allow-list of types read from a checkpoint "
            f"(tensors, containers, numbers, numpy scalars): {first}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ModelImportError(f"{path.name} is not a readable PyTorch checkpoint: {err}") from None


def tensor_dict(value: object, where: str) -> dict[str, torch.Tensor]:
    """``value`` as a state dict (parameter name → tensor), or a ModelImportError."""
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        raise ModelImportError(f"{where} is not a state dict of named tensors")
    return dict(value)


def load_into(network: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Load ``state`` strictly, turning any mismatch into an error that names the parameters."""
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} parameter(s) (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected parameter(s) (first: {', '.join(unexpected[:3])})"
        )
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es) (first: {'; '.join(wrong[:3])})")
    if problems:
        raise ModelImportError(f"{where} does not fit the network: " + ", ".join(problems))
    network.load_state_dict(state, strict=True)
