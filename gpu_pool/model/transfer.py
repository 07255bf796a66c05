"""Moving a pass's arrays between the host and the device without either waiting on the other.

On CUDA, a copy from ordinary (pageable) host memory makes the host wait while the
driver stages it; from pinned memory it is a DMA that the host only queues, so ids
go through pinned memory and the host goes on queueing the pass's kernels. Outputs
come back the same way: the heads' tensors are copied into pinned memory on a stream
of their own, so that the copy engine can run beside the next pass's kernels, and the
host waits once, on one event, for all of them (``HostCopy.wait``), instead of once
per tensor.

On the CPU nothing moves: the tensors are the arrays.

For the same reason the host's clock does not time a pass on CUDA (it says when the
kernels were queued, not when they ran): ``PassTimer`` reads events recorded on the
device's stream instead.

Every wait for the device is on a blocking-sync event (``device_event``): the waiting
thread sleeps until the device reaches it, where a default event (or a stream's
``synchronize``) spins a core at full load for as long as the device runs, a core
that the web workers and the engine's other threads need.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

_copy_streams: dict[torch.device, torch.cuda.Stream] = {}


def to_device(array: np.ndarray, device: torch.device, dtype: type[np.integer] = np.int64) -> torch.Tensor:
    """``array`` on ``device`` as ``dtype``: int64 for indices, int32 for cu_seqlens."""
    tensor = torch.from_numpy(array.astype(dtype, copy=False))
    if device.type != "cuda":
        return tensor.to(device)
    # pin_memory() copies into a block of torch's caching host allocator, which records
    # the copy below and hands the block out again only once that copy is done.
    return tensor.pin_memory().to(device, non_blocking=True)


class HostCopy:
    """Device tensors on their way to the host, as numpy arrays once ``wait`` returns: float16
    stays float16 (half the bytes to copy), any other type becomes float32."""

    def __init__(self, tensors: Sequence[torch.Tensor | None], device: torch.device) -> None:
        """``tensors``: on ``device``, the ones a pass produced (None: a head not asked for)."""
        self._event: torch.cuda.Event | None = None
        if device.type != "cuda":  # nothing to wait for: the arrays, made now
            self._arrays = [None if t is None else _host_type(t).numpy() for t in tensors]
            return
        self._host = self._start(tensors, device)

    def _start(self, tensors: Sequence[torch.Tensor | None], device: torch.device) -> list[torch.Tensor | None]:
        # Converted on the device, on the compute stream: the host gets what the CPU path gives.
        sources = [None if t is None else _host_type(t) for t in tensors]
        stream = copy_stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))  # the copies start once the heads are computed
        host: list[torch.Tensor | None] = []
        with torch.cuda.stream(stream):
            for source in sources:
                if source is None:
                    host.append(None)
                    continue
                pinned = torch.empty(source.shape, dtype=source.dtype, pin_memory=True)
                pinned.copy_(source, non_blocking=True)
                # The compute stream must not reuse the source's memory before this stream has read it.
                source.record_stream(stream)
                host.append(pinned)
            self._event = device_event()
            self._event.record(stream)
        return host

    def wait(self) -> list[np.ndarray | None]:
        if self._event is None:
            return self._arrays
        self._event.synchronize()
        return [None if t is None else t.numpy() for t in self._host]


class PassTimer:
    """A pass's time on its device, from ``PassTimer(device)`` to ``stop``; read ``seconds`` once
    the pass's outputs have reached the host. On the CPU, where each operation has finished
    when it returns, the host's clock."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._events: list[torch.cuda.Event] = []
        self._began = time.perf_counter()
        self._seconds = 0.0
        if device.type == "cuda":
            self._events.append(_timing_event(self._device))

    def stop(self) -> None:
        if self._events:
            self._events.append(_timing_event(self._device))
        else:
            self._seconds = time.perf_counter() - self._began

    def seconds(self) -> float:
        if not self._events:
            return self._seconds
        began, ended = self._events
        ended.synchronize()
        return float(began.elapsed_time(ended)) / 1000


def _timing_event(device: torch.device) -> torch.cuda.Event:
    event = device_event(timing=True)
    event.record(torch.cuda.current_stream(device))  # behind the kernels queued so far
    return event


def device_event(timing: bool = False) -> torch.cuda.Event:
    """An event whose ``synchronize`` sleeps until the device has reached it (blocking sync)."""
    return torch.cuda.Event(enable_timing=timing, blocking=True)  # type: ignore[no-untyped-call]


def wait_for(stream: torch.cuda.Stream) -> None:
    """Sleep until ``stream`` has run the work queued on it so far."""
    event = device_event()
    event.record(stream)
    event.synchronize()


def copy_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream that carries outputs back from ``device``: one per device, made once."""
    stream = _copy_streams.get(device)
    if stream is None:
        stream = _copy_streams[device] = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
    return stream


def _host_type(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype == torch.float16 else tensor.float()
