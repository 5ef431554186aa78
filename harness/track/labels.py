"""Which organ each label id means: a track's model and dataset must name the same organs.

Label names agree when equal after lowering case and dropping whitespace, underscores and hyphens
("Left Kidney" = "left_kidney"). Without a mapping the model's labels must be the dataset's: the
same names at the same ids, so that a predicted class id is the dataset's label id. A mapping
{model label: dataset label} (by name, compared the same way) relabels the prediction before it
is scored: each model class goes to the dataset label it maps to, a model label the mapping does
not name goes to the dataset label of the same name if there is one, else to background
(dataset id 0). Every dataset label must then receive some model class, or its class could never
be predicted. Anything else is refused with both label lists (``LabelMismatchError``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from harness.errors import HarnessError

BACKGROUND = 0
_SPACING = re.compile(r"[\s_\-]+")


class LabelMismatchError(HarnessError):
    """The model's labels do not name the dataset's organs, and no valid mapping says how."""


def normalized(name: str) -> str:
    """The name as labels are compared: lower case, without whitespace, underscores, hyphens."""
    return _SPACING.sub("", str(name)).lower()


def label_list(labels: Mapping[int, str]) -> str:
    """``{0: background, 1: liver, ...}``: a label map as messages show it."""
    return "{" + ", ".join(f"{i}: {labels[i]}" for i in sorted(labels)) + "}"


def label_lut(
    model_labels: Mapping[int, str],
    dataset_labels: Mapping[int, str],
    mapping: Mapping[str, str] | None = None,
) -> list[int] | None:
    """The dataset label id of each model class id (index = model id), or None when the labels
    agree as they are (no mapping needed); ``LabelMismatchError`` naming both lists otherwise."""
    both = f"model labels {label_list(model_labels)}, dataset labels {label_list(dataset_labels)}"
    model_names = {i: normalized(name) for i, name in model_labels.items()}
    if not mapping:
        if model_names == {i: normalized(name) for i, name in dataset_labels.items()}:
            return None
        raise LabelMismatchError(
            f"the model's labels do not name the dataset's organs ({both}; compared by name, "
            "ignoring case and spacing): give a label mapping (model label → dataset label)"
        )
    dataset_ids = {normalized(name): i for i, name in dataset_labels.items()}
    if BACKGROUND not in dataset_labels:
        raise LabelMismatchError(f"a label mapping needs a dataset background label 0 ({both})")
    targets = {}
    for source, target in mapping.items():
        if normalized(source) not in model_names.values():
            raise LabelMismatchError(f"the mapping's {source!r} is not a model label ({both})")
        if normalized(target) not in dataset_ids:
            raise LabelMismatchError(f"the mapping's {target!r} is not a dataset label ({both})")
        targets[normalized(source)] = dataset_ids[normalized(target)]
    lut = [
        targets.get(model_names.get(i), dataset_ids.get(model_names.get(i), BACKGROUND))
        for i in range(max(model_labels) + 1)
    ]
    unreached = [dataset_labels[i] for i in sorted(dataset_labels) if i not in lut]
    if unreached:
        raise LabelMismatchError(
            f"under the mapping {dict(mapping)} no model label becomes dataset label(s) "
            f"{', '.join(unreached)} ({both})"
        )
    return lut
