"""File names of a reference-model folder and the ONNX interface every track's graph has: names
of its input and output, the opset the harness exports, and the metadata namespace of the claims
an exporter records."""

SPEC_FILE = "model.json"
"""A reference-model folder's spec (architecture, labels, preprocessing, sliding window)."""
WEIGHTS_FILE = "model.safetensors"
"""A reference-model folder's FP32 weights (a torch network's)."""
ONNX_FILE = "model.onnx"
"""File name of every ONNX form of a model the harness reads or writes: an ONNX reference's graph,
an ONNX upload, a quantizer container's output and its FP32 input."""
OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
METADATA_PREFIX = "medquant."
