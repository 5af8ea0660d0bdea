"""What users read, written in one place: verdicts and claims in words (``verdicts``,
``claims``, ``breakdowns``), the terminal (``terminal``), Markdown (``markdown``), JSON
and the JUnit properties (``json_report``), pytest's failure representation (``longrepr``),
images (``plots``) and the ``--vram-artifacts`` files (``artifacts``)."""
