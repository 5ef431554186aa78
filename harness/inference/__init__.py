"""Inference: the sliding-window inferer, the pipelined evaluation loop over test cases and
latency statistics.

Depends on: ``harness.data``, ``harness.models``, ``harness.scoring.metrics``.
"""
