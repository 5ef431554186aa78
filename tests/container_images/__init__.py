"""Offline Docker test images: built from this machine's Python and venv, no registry needed."""
