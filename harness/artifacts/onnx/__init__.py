"""ONNX artifacts: FP32 and Q/DQ export, graph helpers and the verifier of uploaded files."""
