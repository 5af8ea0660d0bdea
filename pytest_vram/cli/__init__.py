"""The command line, ``python -m pytest_vram compare|comment|benchmark|chart|record-json``:
runs over time, the PR comment, exports and charts, recording a run into baselines."""
