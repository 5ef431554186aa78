"""Statistics shared by PTQ methods and analyses: layer input hooks, Gram matrices,
reconstruction errors, activation analysis and sensitivity.

Depends on: ``reference_methods.simulator``.
"""
