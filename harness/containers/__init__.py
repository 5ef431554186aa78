"""Quantizer containers: images (pinned by digest), the /input and /output protocol, and the
sandboxed runner.

Depends on: ``harness.track``, ``harness.backends``, ``harness.artifacts``, ``harness.models``,
``harness.data``, ``reference_methods.simulator`` (the granularities a track allows); the Docker
SDK.
"""
