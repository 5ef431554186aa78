"""MedQuant evaluation harness, importable and usable without Django.

Layers, each importing only those before it (its ``__init__`` docstring, or a top-level module's
own docstring, names them in its "Depends on:" paragraph; ``tests/test_architecture.py`` reads
those paragraphs and fails on any import, type-only ones included, that breaks them, and on any
circle between layers):

``data``, ``inference`` → ``models`` → ``scoring`` → ``artifacts`` → ``backends`` → ``track`` →
``containers`` → ``entry`` → ``analysis`` → ``cli``; beside them ``demo`` (the demo bundle) and
``client`` (the REST client). ``reference_methods.simulator`` may be imported from ``artifacts``
on; PTQ methods only by ``entry`` (baselines), ``analysis`` and ``cli``.
Dependency direction: leaderboard → harness → reference_methods, never the reverse.

Every package may import: ``harness.errors`` (who is at fault), ``harness.onnxruntime_session``
(ONNX Runtime sessions, the reference executor of ONNX semantics) and ``harness.progress`` (the
progress of long loops, for whoever listens).
"""

__version__ = "0.1.0"
