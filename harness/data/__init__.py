"""Data: datasets (MSD / nnU-Net v2 layouts, named splits), preprocessing, calibration patches,
synthetic phantoms and the demo bundle.

Depends on: nothing else of the harness (no models, no inference, no reference_methods).
"""
