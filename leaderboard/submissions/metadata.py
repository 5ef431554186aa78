"""Structured submission metadata beyond the method name: hyperparameters (a JSON object), the
number of calibration cases used, paper and code URLs. The web form, the API and ``harness
submit`` all send it through ``intake.accept``; a bad value is a ValidationError naming the
field."""

from __future__ import annotations

import json

from django.core.exceptions import ValidationError

from harness.entry.baseline import ptq_methods

MAX_HYPERPARAMETERS_BYTES = 8192
"""A method's settings fit in a few hundred bytes; more is not metadata."""
MAX_CALIBRATION_CASES = 100_000


def method_names() -> list[str]:
    """Names offered for the method field (free text is accepted too): the reference methods'
    labels."""
    return [label for label, _ in ptq_methods().values()]


def parse_hyperparameters(value: str | dict | None) -> dict:
    """A JSON object (given as text, or already parsed) of the method's settings; empty → {}."""
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        if len(value.encode()) > MAX_HYPERPARAMETERS_BYTES:
            raise ValidationError(
                {"hyperparameters": f"at most {MAX_HYPERPARAMETERS_BYTES} bytes of JSON"}
            )
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValidationError(
                {"hyperparameters": f"not valid JSON ({error.msg} at character {error.pos})"}
            ) from None
    if not isinstance(value, dict):
        raise ValidationError(
            {"hyperparameters": 'must be a JSON object, e.g. {"damp": 0.01, "block_size": 128}'}
        )
    if len(json.dumps(value).encode()) > MAX_HYPERPARAMETERS_BYTES:
        raise ValidationError(
            {"hyperparameters": f"at most {MAX_HYPERPARAMETERS_BYTES} bytes of JSON"}
        )
    return value


def check_calibration_cases(value: int | None) -> int | None:
    """The number of calibration cases the method used (None: not stated)."""
    if value is not None and not 0 <= value <= MAX_CALIBRATION_CASES:
        raise ValidationError(
            {"calibration_cases": f"a number of cases from 0 to {MAX_CALIBRATION_CASES}"}
        )
    return value


def metadata(hyperparameters: str | dict | None, calibration_cases: int | None) -> dict:
    """The Submission fields of the structured metadata, checked."""
    return {
        "hyperparameters": parse_hyperparameters(hyperparameters),
        "calibration_cases": check_calibration_cases(calibration_cases),
    }
