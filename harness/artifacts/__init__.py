"""Artifacts: what a submission uploads (quantized checkpoints, ONNX with Q/DQ nodes), read,
verified against the track and written.

Depends on: ``harness.models``, ``harness.data`` and ``reference_methods.simulator`` (the
trusted integer simulator and weight format), never on PTQ methods or statistics.
"""
