"""Device names as DEVICE spells them (``cpu``, ``cpu:1``, ``cuda``, ``cuda:0``, ``auto``): torch-free,
so that the master, the web side and the engine read them alike."""

from __future__ import annotations


def is_cpu(device: str) -> bool:
    """Whether ``device`` names the CPU, with or without an index (``cpu:0``)."""
    return device == "cpu" or device.startswith("cpu:")
