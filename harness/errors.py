"""Errors the harness raises, split by who is at fault.

``SubmissionError`` and its subclasses: the submitted artifact (checkpoint, ONNX file, quantizer
image or its output) is at fault; the message is shown to the submitter verbatim and the
submission ends ``rejected``. Every other ``HarnessError`` is a problem on the trusted side (a
track's dataset or reference model, a backend that cannot run here): the submission ends
``failed``, is not counted against the submitter, and the details go to the maintainers' log.

Depends on: nothing.
"""


class HarnessError(Exception):
    """Base class: a clear, specific problem with an input the harness was given."""


class SubmissionError(HarnessError):
    """The submitted artifact is at fault (malformed, over the track's limits, not the track's
    network); the message is for the submitter."""


class DatasetError(HarnessError):
    """A dataset folder, case list or NIfTI file is missing, unreadable or inconsistent."""


class ModelSpecError(HarnessError):
    """A reference-model spec or its weights do not describe a buildable network."""


class ModelImportError(ModelSpecError):
    """A maintainer's nnU-Net folder or MONAI bundle cannot be imported as a reference model."""


class CheckpointError(SubmissionError):
    """A quantized checkpoint (manifest + safetensors) does not fit the reference architecture."""


class BackendUnavailable(HarnessError):
    """The track's backend cannot run on this worker (missing library or accelerator)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"backend unavailable: {reason}")
        self.reason = reason
