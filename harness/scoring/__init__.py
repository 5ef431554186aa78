"""Scoring: DSC / NSD metrics, the evaluation loop over test cases (inference, then metrics,
pipelined) and the versioned result document.

Depends on: ``harness.data``, ``harness.inference``, ``harness.models``; never on
reference_methods.
"""
