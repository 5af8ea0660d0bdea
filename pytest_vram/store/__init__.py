"""The files pytest-vram keeps in the repository: the baseline files (``baselines``, in
their YAML dialect, ``yaml_dialect``) and the stored breakdowns (``breakdowns``), with the
file mechanics they share (``files``)."""
