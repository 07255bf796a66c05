"""Loading BGE-M3, and the cross-encoder where one is configured, onto the engine's device: the
settings turned into torch objects, then the weights."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch

from gpu_pool.model.device import resolve_device, resolve_dtype
from gpu_pool.model.m3 import M3Model
from gpu_pool.model.reranker import CrossEncoder, Served
from runtime import malloc

log = logging.getLogger("gpu_pool.engine")

# With an accelerator the host only queues kernels: torch's CPU threads have little to do but
# wake each other and take cores from the web workers, and the engine's four threads take turns
# on the GIL. Python's default switch interval (5 ms) would let the device thread, queueing,
# keep a query's answer thread (or the reader) waiting that long; 0.5 ms bounds it to a step.
ACCELERATOR_THREADS = 2
ACCELERATOR_SWITCH_INTERVAL_S = 0.0005


def load(path: Path, device_name: str, dtype_name: str, threads: int, reranker_path: str = "") -> Served:
    """``device_name``, ``dtype_name``: the DEVICE and DTYPE settings (``auto`` allowed);
    ``threads``: the most CPU threads torch may use; ``reranker_path``: the cross-encoder's
    folder, loaded on the same device and in the same dtype ("": none)."""
    adopt_transformers_logging()
    device = resolve_device(device_name)
    if device.accelerator is not None:
        # The engine's device is the current one: torch and its libraries (cuBLAS, the caching
        # allocator, a bare "cuda") then make their context there, not on GPU 0 as well.
        device.accelerator.set_device(device.tensors)  # cuda-only
        threads = min(threads, ACCELERATOR_THREADS)
        sys.setswitchinterval(ACCELERATOR_SWITCH_INTERVAL_S)
    dtype = resolve_dtype(dtype_name, device)
    torch.set_num_threads(threads)
    log.info("Using device %s with dtype %s (%d CPU threads)", device.name, str(dtype).removeprefix("torch."),
             threads)
    started = time.monotonic()
    model = M3Model(path, device, dtype, threads)
    log.info("Model loaded from %s in %.1f s", path, time.monotonic() - started)
    choice = model.attention
    log.info("Attention: %s%s (%s)", choice.path, f" with {choice.kernel_name}" if choice.kernel_name else "",
             choice.reason)
    log.info("Matrix products: %s", model.products)
    if model.graphs is not None:
        sizes = "/".join(str(graph.tokens) for graph in model.graphs.graphs)
        log.info("CUDA graphs recorded for whole passes of up to %s tokens", sizes)
    reranker = None
    if reranker_path:
        started = time.monotonic()
        reranker = CrossEncoder(Path(reranker_path), model)
        log.info("Cross-encoder loaded from %s in %.1f s", reranker_path, time.monotonic() - started)
    # Preparing the weights freed temporaries the size of each, and glibc keeps what it freed in its
    # heap once its mmap threshold has risen past them: the full model in int8 held 3.9 GB after
    # load against 1.8 GB so trimmed.
    malloc.trim()
    return Served(model, reranker)


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
