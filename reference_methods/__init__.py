"""Reference post-training quantization in plain PyTorch (no Django, no harness I/O).

Packages and their dependency rule (each imports only those to its right):
``methods`` (RTN, GPTQ, COMQ, …) → ``statistics`` (Gram, hooks, reconstruction, sensitivity,
activations) → ``simulator`` (the trusted integer simulator and weight format).
"""
