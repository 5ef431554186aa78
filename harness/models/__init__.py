"""Reference models: the architecture registry, reference-model folders (spec + FP32 weights),
training and the shipped demo checkpoints (``demo_models/``).

Depends on: ``harness.data`` (preprocessing), ``harness.inference`` (the sliding window).
"""
