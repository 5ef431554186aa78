"""The trusted integer simulator: quantizers, granularity rules, the weight format, quantized
layers and ``quantize(model, QuantConfig)``.

Depends on: nothing of the project (torch only).
"""
