"""Fault injection for the reliability tests (tests/e2e/test_reliability_*.py), kept out of the engine's code.

These variables make the engine act just before a forward pass, on the batches
that contain the given token id:

- ``ENGINE_FAULT_ERROR_TOKEN``: the pass raises ``RuntimeError``;
- ``ENGINE_FAULT_OOM_TOKEN``: the pass raises ``torch.OutOfMemoryError``;
- ``ENGINE_FAULT_DEVICE_TOKEN``: the pass raises the ``RuntimeError`` of a failed GPU
  (an illegal memory access), which ends the engine;
- ``ENGINE_FAULT_SLOW_TOKEN`` with ``ENGINE_FAULT_SLOW_MS``: the pass sleeps first.

The tests put this folder on PYTHONPATH: Python imports ``sitecustomize`` at
start-up in every process, and in the engine, the only process that imports
``gpu_pool.model.reranker``, this wraps ``Served.start`` (where every pass begins, of bge-m3
and of the cross-encoder alike).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import time
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

_TARGET = "gpu_pool.model.reranker"
_FAULTS = ("ERROR", "OOM", "SLOW", "DEVICE")


def _token(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


def _patch(reranker: ModuleType) -> None:
    error, oom, slow, device = (_token(f"ENGINE_FAULT_{n}_TOKEN") for n in _FAULTS)
    slow_s = int(os.environ.get("ENGINE_FAULT_SLOW_MS", "0")) / 1000
    start = reranker.Served.start

    def start_with_faults(self: object, ids: np.ndarray, *args: object, **kwargs: object) -> object:
        if slow is not None and (ids == slow).any():
            time.sleep(slow_s)
        if error is not None and (ids == error).any():
            raise RuntimeError("injected fault: the forward pass failed")
        if oom is not None and (ids == oom).any():
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected fault)")
        if device is not None and (ids == device).any():
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected fault)")
        return start(self, ids, *args, **kwargs)

    reranker.Served.start = start_with_faults


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_patch(module: ModuleType) -> None:
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_then_patch
        return spec


if any(os.environ.get(f"ENGINE_FAULT_{n}_TOKEN") for n in _FAULTS):
    sys.meta_path.insert(0, _PatchOnImport())
