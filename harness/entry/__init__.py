"""Entry points: the three things a worker (or the CLI) asks the harness to evaluate, one module
each, one return type (``Evaluated``) and one at-fault exception
(``harness.errors.SubmissionError``: the submission ends ``rejected`` with its message; anything
else is the trusted side's problem):

* ``upload``: an uploaded checkpoint or ONNX file, the FP32 reference, a named simulated scheme;
* ``baseline``: the reference baselines a track starts with, computed and evaluated as uploads;
* ``container``: a quantizer container run sandboxed, its output evaluated as an upload.

Depends on: ``harness.track``, ``harness.backends``, ``harness.artifacts``, ``harness.scoring``,
``harness.inference``, ``harness.models``, ``harness.data``, ``harness.containers``,
``reference_methods.simulator`` (named schemes) and ``reference_methods.methods`` (the baselines'
reference PTQ methods).
"""
