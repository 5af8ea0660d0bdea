"""The pytest side: the entry point (``entry``: options, ``pytest_configure``, fixtures),
the per-run state (``session``), the hook classes registered once at configure
(``collection``, ``measurement``, ``aggregation``, ``claim_judging``, ``benchmarking``,
``xdist``), the stash keys they share (``keys``), and the process group of a sharded test
(``world``)."""
