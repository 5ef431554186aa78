"""Segmentation datasets on disk: Medical Segmentation Decathlon and nnU-Net v2 raw layouts.

A dataset is a folder with `dataset.json`, `imagesTr/` and `labelsTr/`. The two layouts differ in
how labels are declared (MSD: ``{"0": "background"}``; nnU-Net v2: ``{"background": 0}``) and how
cases are listed (MSD: a ``training`` list; nnU-Net v2: files ``<case>_<channel>.nii.gz``).
An optional ``splits.json`` names the ``train``, ``calibration`` and ``test`` case lists; a list
may be empty (a dataset without calibration cases, say), which is no case rather than an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.errors import DatasetError

Layout = Literal["msd", "nnunet-v2"]
SPLITS_FILE = "splits.json"


@dataclass(frozen=True)
class Case:
    """One case: its image channel files (in channel order) and its label file, if any."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass(frozen=True)
class Dataset:
    """A parsed dataset folder; file contents are read later, case by case."""

    root: Path
    name: str
    layout: Layout
    labels: dict[int, str]
    channels: tuple[str, ...]
    cases: tuple[Case, ...]
    splits: dict[str, tuple[str, ...]]

    @property
    def foreground_classes(self) -> tuple[int, ...]:
        """Label values other than background (0), in increasing order."""
        return tuple(sorted(v for v in self.labels if v != 0))

    def select(self, case_ids: list[str] | tuple[str, ...]) -> tuple[Case, ...]:
        """The named cases, in the given order (none for an empty list); unknown ids are errors."""
        by_id = {c.case_id: c for c in self.cases}
        unknown = [cid for cid in case_ids if cid not in by_id]
        if unknown:
            raise DatasetError(
                f"dataset {self.name!r} has no case(s) {', '.join(unknown)} "
                f"(it has {len(by_id)} cases, e.g. {next(iter(by_id), 'none')})"
            )
        return tuple(by_id[cid] for cid in case_ids)

    def split(self, name: str) -> tuple[Case, ...]:
        """Cases of a named split (``train``, ``calibration``, ``test``) from ``splits.json``; an
        empty list there is a split without cases."""
        if name not in self.splits:
            raise DatasetError(
                f"dataset {self.name!r} defines no {name!r} split in {SPLITS_FILE} "
                f"(defined: {', '.join(sorted(self.splits)) or 'none'})"
            )
        return self.select(self.splits[name])


def load_dataset(root: str | Path) -> Dataset:
    """Parse a dataset folder, detecting MSD or nnU-Net v2 layout from ``dataset.json``."""
    root = Path(root)
    meta = _read_json(root / "dataset.json", "dataset description")
    if "channel_names" in meta or "file_ending" in meta:
        dataset = _load_nnunet_v2(root, meta)
    elif "training" in meta:
        dataset = _load_msd(root, meta)
    else:
        raise DatasetError(
            f"{root / 'dataset.json'} is neither MSD (no 'training' list) "
            "nor nnU-Net v2 (no 'channel_names')"
        )
    if not dataset.cases:
        raise DatasetError(f"dataset {dataset.name!r} at {root} lists no cases")
    for case in dataset.cases:
        for path in (*case.images, *([case.label] if case.label else [])):
            if not path.is_file():
                raise DatasetError(f"case {case.case_id}: missing file {path}")
    for name, ids in dataset.splits.items():
        try:
            dataset.select(ids)
        except DatasetError as err:
            raise DatasetError(f"{SPLITS_FILE} split {name!r}: {err}") from None
    return dataset


def write_splits(root: str | Path, splits: dict[str, list[str]]) -> Path:
    """Write ``splits.json`` (split name → case ids) into a dataset folder."""
    path = Path(root) / SPLITS_FILE
    path.write_text(json.dumps(splits, indent=2) + "\n")
    return path


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DatasetError(f"missing {what}: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path} must hold a JSON object")
    return data


def _parse_labels(raw: object, *, name_to_value: bool, where: Path) -> dict[int, str]:
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{where}: 'labels' must be a non-empty object")
    labels: dict[int, str] = {}
    for key, val in raw.items():
        value, name = (val, key) if name_to_value else (key, val)
        try:
            ivalue = int(value)
        except (TypeError, ValueError):
            raise DatasetError(
                f"{where}: label {key!r} must map to an integer value (region-based "
                "nnU-Net labels are not supported)"
            ) from None
        if ivalue < 0 or ivalue > 255:
            raise DatasetError(f"{where}: label value {ivalue} outside 0..255")
        if ivalue in labels:
            raise DatasetError(f"{where}: label value {ivalue} declared twice")
        labels[ivalue] = str(name)
    if 0 not in labels:
        raise DatasetError(f"{where}: labels must declare background as value 0")
    return labels


def _splits(root: Path) -> dict[str, tuple[str, ...]]:
    path = root / SPLITS_FILE
    if not path.exists():
        return {}
    raw = _read_json(path, "splits")
    if not all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in raw.values()):
        raise DatasetError(f"{path}: every split must be a list of case ids")
    return {k: tuple(v) for k, v in raw.items()}


def _resolve(root: Path, rel: object, where: str) -> Path:
    if not isinstance(rel, str) or not rel:
        raise DatasetError(f"{where}: expected a relative file path, got {rel!r}")
    # Lexical check (normpath, not resolve): refuse '..' and absolute paths, but keep symlinked
    # files inside the folder usable and named as dataset.json names them.
    base = Path(os.path.normpath(root.absolute()))
    path = Path(os.path.normpath(base / rel))
    if not path.is_relative_to(base):
        raise DatasetError(f"{where}: path {rel!r} points outside the dataset folder")
    return path


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    raise DatasetError(f"{path}: only NIfTI files (.nii, .nii.gz) are supported")


def _load_msd(root: Path, meta: dict) -> Dataset:
    where = root / "dataset.json"
    labels = _parse_labels(meta.get("labels"), name_to_value=False, where=where)
    modality = meta.get("modality") or {"0": "image"}
    training = meta["training"]
    if not isinstance(training, list):
        raise DatasetError(f"{where}: 'training' must be a list")
    cases = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DatasetError(f"{where}: training[{i}] needs an 'image' entry")
        image = _resolve(root, entry["image"], f"{where} training[{i}]")
        label = (
            _resolve(root, entry["label"], f"{where} training[{i}]") if "label" in entry else None
        )
        cases.append(Case(_case_id(image), (image,), label))
    return Dataset(
        root=root,
        name=str(meta.get("name", root.name)),
        layout="msd",
        labels=labels,
        channels=tuple(str(modality[k]) for k in sorted(modality, key=int)),
        cases=tuple(cases),
        splits=_splits(root),
    )


def _load_nnunet_v2(root: Path, meta: dict) -> Dataset:
    where = root / "dataset.json"
    labels = _parse_labels(meta.get("labels"), name_to_value=True, where=where)
    channel_names = meta.get("channel_names") or {}
    if not channel_names:
        raise DatasetError(f"{where}: 'channel_names' must be a non-empty object")
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in (".nii.gz", ".nii"):
        raise DatasetError(f"{where}: file_ending {ending!r} is not NIfTI")
    n_channels = len(channel_names)
    labels_dir = root / "labelsTr"
    images_dir = root / "imagesTr"
    if not labels_dir.is_dir() or not images_dir.is_dir():
        raise DatasetError(f"{root}: nnU-Net v2 layout needs imagesTr/ and labelsTr/")
    cases = []
    for label in sorted(labels_dir.glob(f"*{ending}")):
        case_id = label.name[: -len(ending)]
        images = tuple(images_dir / f"{case_id}_{c:04d}{ending}" for c in range(n_channels))
        cases.append(Case(case_id, images, label))
    expected = meta.get("numTraining")
    if isinstance(expected, int) and expected != len(cases):
        raise DatasetError(
            f"{where}: numTraining is {expected} but labelsTr/ holds {len(cases)} labels"
        )
    return Dataset(
        root=root,
        name=str(meta.get("name", root.name)),
        layout="nnunet-v2",
        labels=labels,
        channels=tuple(str(channel_names[k]) for k in sorted(channel_names, key=int)),
        cases=tuple(cases),
        splits=_splits(root),
    )
