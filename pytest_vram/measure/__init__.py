"""Counting on a backend: the :class:`~pytest_vram.measure.meter.Meter` (the one definition
of model, peak, reserved and leaked bytes), the attribution of what was live at a peak,
and the ``vram`` fixture's object. torch is reached only through the backend."""
