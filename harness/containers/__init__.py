"""Quantizer containers: images (pinned by digest), the /input and /output protocol, and the
sandboxed runner.

Depends on: ``harness.track``, ``harness.artifacts``, ``harness.backends`` (which artifact a track
takes); the Docker SDK.
"""
