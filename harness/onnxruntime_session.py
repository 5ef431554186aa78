"""ONNX Runtime sessions shared by every layer: a CPU session with the harness's settings, a
session as a torch-style network for the sliding-window inferer, and the FP32 graph of an ONNX
reference model as its network. ONNX Runtime is the reference executor of ONNX (and Q/DQ)
semantics, so the models, the verifier's engine checks and the backends all run graphs through
this one module.

Depends on: nothing of the harness but ``harness.errors``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state
from torch import nn

from harness.errors import ModelSpecError, SubmissionError, out_of_memory

ORT_ERRORS = tuple(
    getattr(_ort_state, name)
    for name in (
        "Fail",
        "InvalidArgument",
        "NoSuchFile",
        "NoModel",
        "EngineError",
        "RuntimeException",
        "InvalidProtobuf",
        "ModelLoaded",
        "NotImplemented",
        "InvalidGraph",
        "EPFail",
    )
    if hasattr(_ort_state, name)
)


def create_session(
    path: str | Path, threads: int = 1, optimized_path: str | Path | None = None
) -> ort.InferenceSession:
    """CPU session with full graph optimisation, ``threads`` intra-op threads, 1 inter-op thread;
    the optimised graph is written to ``optimized_path`` when given."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.qdqisint8allowed", "1")
    options.log_severity_level = 3
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except ORT_ERRORS as error:
        raise out_of_memory("ONNX Runtime", "loading the model", error) or SubmissionError(
            f"ONNX Runtime cannot load the model: {error}"
        ) from error


class OrtNetwork(nn.Module):
    """An ORT session as a network: (B, C, *roi) float tensor → (B, K, *roi) logits.

    A graph with a fixed batch size b gets the patches in chunks of b, the last one zero-padded
    (padding rows are dropped from the output), so the inferer's semantics are unchanged.
    """

    def __init__(self, session: ort.InferenceSession) -> None:
        super().__init__()
        self.session = session
        (graph_input,) = session.get_inputs()
        (graph_output,) = session.get_outputs()
        self.input_name, self.output_name = graph_input.name, graph_output.name
        batch = graph_input.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        step = self.fixed_batch or len(array)
        outputs = []
        for start in range(0, len(array), step):
            chunk = array[start : start + step]
            rows = len(chunk)
            if rows < step:
                pad = np.zeros((step - rows, *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            try:
                out = self.session.run([self.output_name], {self.input_name: chunk})[0]
            except ORT_ERRORS as error:
                raise out_of_memory("ONNX Runtime", "running the model", error) or SubmissionError(
                    f"ONNX Runtime failed to run the model: {error}"
                ) from error
            outputs.append(out[:rows])
        return torch.from_numpy(np.concatenate(outputs).astype(np.float32, copy=False))


def graph_reference(path: Path) -> OrtNetwork:
    """The FP32 graph of an ONNX reference model as its network, run by ONNX Runtime (the
    reference executor of ONNX semantics) on as many threads as torch uses."""
    if not path.is_file():
        raise ModelSpecError(f"missing ONNX graph {path}")
    try:
        return OrtNetwork(create_session(path, threads=torch.get_num_threads())).eval()
    except SubmissionError as err:  # the trusted side's graph: a model-spec problem
        raise ModelSpecError(f"{path}: {err}") from None
