"""MedQuant evaluation harness, importable and usable without Django.

Packages: ``data`` → ``models`` → ``inference`` → ``scoring``; ``artifacts``; ``backends``;
``track``; ``containers``; ``analysis``; ``cli``. Scoring, artifacts and backends depend on
``reference_methods.simulator`` only; ``analysis``, ``baselines`` and the CLI may run PTQ methods.
Dependency direction: leaderboard → harness → reference_methods, never the reverse.
"""

__version__ = "0.1.0"
