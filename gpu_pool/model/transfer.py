"""Moving a pass's arrays between the host and the device without either waiting on the other.

On an accelerator (CUDA), a copy from ordinary (pageable) host memory makes the host wait
while the driver stages it; from pinned memory it is a DMA that the host only queues, so ids
go through pinned memory and the host goes on queueing the pass's kernels. Outputs come back
the same way: the heads' tensors are copied into pinned memory on a stream of their own, so
that the copy engine can run beside the next pass's kernels, and the host waits once, on one
event, for all of them (``HostCopy.wait``), instead of once per tensor.

On the CPU nothing moves: the tensors are the arrays.

For the same reason the host's clock does not time a pass on an accelerator (it says when
the kernels were queued, not when they ran): ``PassTimer`` reads events recorded on the
device's stream instead. It also keeps the host near the device (``keep_ahead``): a host
that queues a whole bulk pass in a few milliseconds would leave a query arriving behind all
of it; one that stays a layer ahead leaves it behind at most that layer.

Every wait for the device is on a blocking-sync event (``Accelerator.event``): the waiting
thread sleeps until the device reaches it, where a default event (or a stream's
``synchronize``) spins a core at full load for as long as the device runs, a core that the
web workers and the engine's other threads need.

Every call into the accelerator goes through ``gpu_pool/model/device.py``'s seam; the first
line of each block that runs on an accelerator only is marked ``# cuda-only``: the simulated
device (testkit/simdevice.py) runs each of them in the suite, and a test checks that it does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

import numpy as np
import torch

from gpu_pool.model.device import Accelerator, Device, Event, Stream

_copy_streams: dict[tuple[Accelerator, torch.device], Stream] = {}


def to_device(array: np.ndarray, device: torch.device | Device, dtype: type[np.integer] = np.int64) -> torch.Tensor:
    """``array`` on ``device`` as ``dtype``: int64 for indices, int32 for cu_seqlens."""
    device = Device.of(device)
    tensor = torch.from_numpy(array.astype(dtype, copy=False))
    if device.accelerator is None:
        return tensor.to(device.tensors)
    return device.accelerator.upload(tensor, device.tensors)  # cuda-only


def release_memory(device: torch.device | Device) -> None:
    """Give the device's cached memory back (after running out of it)."""
    accelerator = Device.of(device).accelerator
    if accelerator is not None:
        accelerator.empty_cache()  # cuda-only


class HostCopy:
    """Device tensors on their way to the host, as numpy arrays once ``wait`` returns: float16
    stays float16 (half the bytes to copy), any other type becomes float32."""

    def __init__(self, tensors: Sequence[torch.Tensor | None], device: torch.device | Device) -> None:
        """``tensors``: on ``device``, the ones a pass produced (None: a head not asked for)."""
        device = Device.of(device)
        self._event: Event | None = None
        if device.accelerator is None:  # nothing to wait for: the arrays, made now
            self._arrays = [None if t is None else _host_type(t).numpy() for t in tensors]
            return
        self._host = self._start(tensors, device.accelerator, device.tensors)  # cuda-only

    def _start(self, tensors: Sequence[torch.Tensor | None], accelerator: Accelerator,
               device: torch.device) -> list[torch.Tensor | None]:
        # Converted on the device, on the compute stream: the host gets what the CPU path gives.
        sources = [None if t is None else _host_type(t) for t in tensors]  # cuda-only
        stream = copy_stream(accelerator, device)
        # The copies start once the heads are computed.
        stream.wait_stream(accelerator.current_stream(device))
        host: list[torch.Tensor | None] = []
        with accelerator.use_stream(stream):
            for source in sources:
                if source is None:
                    host.append(None)  # cuda-only
                    continue
                pinned = accelerator.pinned_empty(source.shape, source.dtype)  # cuda-only
                pinned.copy_(source, non_blocking=True)
                # The compute stream must not reuse the source's memory before this stream has read it.
                accelerator.keep_for(source, stream)
                host.append(pinned)
            self._event = accelerator.event(timing=False)
            self._event.record(stream)
        return host

    def wait(self) -> list[np.ndarray | None]:
        if self._event is None:
            return self._arrays
        self._event.synchronize()  # cuda-only
        return [None if t is None else t.numpy() for t in self._host]


class PassTimer:
    """A pass's place in its device's queue. Its time on the device, from ``PassTimer(device)``
    to ``stop`` (read ``seconds`` once the pass's outputs have reached the host; on the CPU,
    where each operation has finished when it returns, the host's clock); and the host's waits
    for the device within the pass (``keep_ahead``, ``sync``: at once on the CPU)."""

    def __init__(self, device: torch.device | Device) -> None:
        self._device = Device.of(device)
        self._accelerator = self._device.accelerator
        self._events: list[Event] = []
        self._queued: deque[Event] = deque()  # one per step queued and not known to have run
        self._began = time.perf_counter()
        self._seconds = 0.0
        if self._accelerator is not None:
            self._events.append(self._mark(timing=True))  # cuda-only

    def stop(self) -> None:
        if self._accelerator is not None:
            self._events.append(self._mark(timing=True))  # cuda-only
        else:
            self._seconds = time.perf_counter() - self._began

    def seconds(self) -> float:
        if not self._events:
            return self._seconds
        began, ended = self._events  # cuda-only
        ended.synchronize()
        return float(began.elapsed_time(ended)) / 1000

    def keep_ahead(self, steps: int) -> None:
        """After a step is queued: sleep until the device is at most ``steps`` steps behind."""
        if self._accelerator is None:
            return
        self._queued.append(self._mark(timing=False))  # cuda-only
        while len(self._queued) > steps:
            oldest = self._queued.popleft()  # cuda-only
            if not oldest.query():  # most often it has run: no sleep, no wake-up
                oldest.synchronize()  # cuda-only

    def sync(self) -> None:
        """Sleep until the device has run the work queued so far."""
        self._queued.clear()
        if self._accelerator is not None:
            self._mark(timing=False).synchronize()  # cuda-only

    def _mark(self, timing: bool) -> Event:
        """An event behind the kernels queued so far on the device's current stream."""
        assert self._accelerator is not None, "the CPU has no queue"  # cuda-only
        event = self._accelerator.event(timing)
        event.record(self._accelerator.current_stream(self._device.tensors))
        return event


def copy_stream(accelerator: Accelerator, device: torch.device) -> Stream:
    """The stream that carries outputs back from ``device``: one per device, made once."""
    stream = _copy_streams.get((accelerator, device))  # cuda-only
    if stream is None:
        stream = _copy_streams[accelerator, device] = accelerator.new_stream(device)  # cuda-only
    return stream


def _host_type(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype == torch.float16 else tensor.float()
