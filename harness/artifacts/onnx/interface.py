"""The ONNX interface every track's graph has: names of its input and output, the opset the
harness exports, and the metadata namespace of the claims an exporter records."""

OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
METADATA_PREFIX = "medquant."
