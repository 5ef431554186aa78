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


ENGINE_OUT_OF_MEMORY = ("Failed to allocate", "bad_alloc", "bad allocation")
"""How ONNX Runtime (its arena: "Failed to allocate memory for requested buffer") and OpenVINO
("Failed to allocate N bytes of memory", std::bad_alloc) report an allocation refused."""
MIB = 2**20


def out_of_memory(engine: str, doing: str, error: Exception) -> SubmissionError | None:
    """The ``SubmissionError`` for an allocation ``engine`` was refused while ``doing``
    something with an uploaded graph -- refused by this process's address-space bound
    (``RLIMIT_AS``: the evaluation's memory limit on a worker), which it names -- or None when
    ``error`` is another failure."""
    import resource

    if not any(marker in str(error) for marker in ENGINE_OUT_OF_MEMORY):
        return None
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    bound = (
        "the memory the host could give"
        if limit == resource.RLIM_INFINITY
        else f"this evaluation's memory limit of {limit // MIB} MiB"
    )
    return SubmissionError(
        f"{engine} ran out of memory {doing}: a tensor or workspace of the graph does not fit "
        f"in {bound}"
    )
