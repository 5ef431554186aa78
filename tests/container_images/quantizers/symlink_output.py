"""Hostile: leaves a symlink in /output pointing at a host-looking path, hoping the harness
follows it when it copies the output."""

import os

os.symlink("/etc/shadow", "/output/weights.safetensors")
