"""Analysis: MedQuanBench-style studies, layer sensitivity and activation reports.

The only harness package besides the CLI and the baselines that runs PTQ methods: depends on
``harness.entry.upload``, ``reference_methods.methods`` and ``reference_methods.statistics``.

Depends on: ``harness.entry``, ``harness.containers``, ``harness.track``, ``harness.scoring``,
``harness.inference``, ``harness.models``, ``harness.data``, ``reference_methods.methods``,
``reference_methods.statistics``, ``reference_methods.simulator``.
"""
