"""Loading BGE-M3 onto the engine's device: the settings turned into torch objects, then the weights."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from gpu_pool.model.device import resolve_device, resolve_dtype
from gpu_pool.model.m3 import M3Model

log = logging.getLogger("gpu_pool.engine")


def load(path: Path, device_name: str, dtype_name: str, threads: int) -> M3Model:
    """``device_name``, ``dtype_name``: the DEVICE and DTYPE settings (``auto`` allowed);
    ``threads``: the most CPU threads torch may use."""
    adopt_transformers_logging()
    device = resolve_device(device_name)
    if device.type == "cuda":
        # The engine's device is the current one: torch and its libraries (cuBLAS, the caching
        # allocator, a bare "cuda") then make their context there, not on GPU 0 as well.
        torch.cuda.set_device(device)
    dtype = resolve_dtype(dtype_name, device)
    torch.set_num_threads(threads)
    log.info("Using device %s with dtype %s (%d CPU threads)", device, str(dtype).removeprefix("torch."), threads)
    started = time.monotonic()
    model = M3Model(path, device, dtype, threads)
    log.info("Model loaded from %s in %.1f s", path, time.monotonic() - started)
    choice = model.attention
    log.info("Attention: %s%s (%s)", choice.path, f" with {choice.kernel_name}" if choice.kernel_name else "",
             choice.reason)
    return model


def adopt_transformers_logging() -> None:
    """Send transformers' records through our handler; in the engine, after importing transformers.

    On import, transformers gives its logger a bare stderr handler of its own
    and stops it from propagating, so its warnings (the weight-loading report,
    for one) bypass the format chosen here.
    """
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    # A bar redrawn on stderr is no log line. (transformers leaves this function unannotated.)
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
