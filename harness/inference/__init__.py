"""Inference: the sliding-window inferer, latency statistics and the paired latency protocol,
and what a real backend measures on a network.

Depends on: nothing else of the harness (the window, the patch grid and the timing protocol
are plain tensor code).
"""
