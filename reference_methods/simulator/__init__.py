"""The trusted integer simulator: quantizers, granularity rules, the weight format, quantized
layers and ``quantize(model, QuantConfig)``.

Depends on: torch only. Scoring code (``harness.artifacts``, ``harness.backends``,
``harness.scoring``) may import this package and nothing else of reference_methods.
"""
