"""Analysis: MedQuanBench-style studies, layer sensitivity and activation reports.

The only harness package besides the CLI and the baselines that runs PTQ methods: depends on
``harness.submission``, ``reference_methods.methods`` and ``reference_methods.statistics``.
"""
