"""The plugin's pure core: sizes and tolerances, the figures of a measurement, the ``vram``
marker's options, verdicts, the records a run reports, claims and breakdowns.

Plain data and functions of it: nothing here reads a file, imports torch or registers a
pytest hook, and nothing here imports another layer of the package.
"""
