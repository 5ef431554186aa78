"""Scoring: DSC / NSD metrics and the versioned result document.

Depends on: ``harness.inference`` (the run it summarises); never on reference_methods.
"""
