"""Data: datasets (MSD / nnU-Net v2 layouts, named splits), preprocessing, calibration patches,
synthetic phantoms and the demo bundle.

Depends on: ``harness.errors`` only (no models, no inference, no reference_methods).
"""
