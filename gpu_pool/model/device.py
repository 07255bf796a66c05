"""Turning the DEVICE and DTYPE settings into the engine's ``Device``, and the seam to an accelerator.

The CPU and an accelerator differ only here. On the CPU each operation has finished when it
returns. An accelerator (CUDA) runs asynchronously: the host queues kernels on a stream and
learns that they ran from events. Every call of gpu_pool into such a device goes through one
small object, an ``Accelerator``: streams, blocking events (record, query, synchronize,
elapsed time), pinned host buffers and asynchronous copies, the current device, the memory
cache, graph capture, and the type of its out-of-memory error. ``CudaAccelerator`` wraps ``torch.cuda``.

Accelerators are found by DEVICE's kind (the part before ``:``) in a registry: ``cuda`` is
built in; a kind that names a module (``testkit.simdevice:0``) is imported, and registers its
own accelerator. So a simulated device (testkit/simdevice.py) drives the very code the CUDA
path runs, and the engine has no branch of its own for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

# int8: the CPU's int8 products (gpu_pool/model/cpu_linear.py), float32 around them; never chosen by auto.
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.qint8}
# CPU features with bfloat16 matrix instructions; without them bfloat16 is emulated and slower than float32.
_FAST_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


class Event(Protocol):
    """A point in a stream's queue (``torch.cuda.Event``'s methods that gpu_pool uses)."""

    def record(self, stream: Any = None) -> None: ...

    def query(self) -> bool: ...

    def synchronize(self) -> None: ...

    def elapsed_time(self, end_event: Any) -> float:
        """Milliseconds of the device's time from this event to ``end_event``."""
        ...


class Stream(Protocol):
    """A queue of work on the device (``torch.cuda.Stream``'s methods that gpu_pool uses)."""

    def wait_stream(self, stream: Any) -> None: ...

    def query(self) -> bool: ...


class Accelerator(Protocol):
    """What gpu_pool asks of an asynchronous device; ``CudaAccelerator`` is the real one."""

    def is_available(self) -> bool: ...

    def tensor_device(self, index: int) -> torch.device:
        """Where the tensors of the device numbered ``index`` live."""
        ...

    def set_device(self, device: torch.device) -> None:
        """Make ``device`` the calling thread's current one."""
        ...

    def current_stream(self, device: torch.device) -> Stream: ...

    def new_stream(self, device: torch.device) -> Stream: ...

    def use_stream(self, stream: Stream) -> AbstractContextManager[Any]:
        """Queue the work of the ``with`` block on ``stream``."""
        ...

    def event(self, timing: bool) -> Event:
        """A blocking-sync event: its ``synchronize`` sleeps instead of spinning a core."""
        ...

    def upload(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``tensor`` (host memory) on ``device``, copied without the host waiting for the copy."""
        ...

    def pinned_empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """Host memory that the device copies into without the host staging it."""
        ...

    def keep_for(self, tensor: torch.Tensor, stream: Stream) -> None:
        """Keep ``tensor``'s memory from reuse until the work queued on ``stream`` so far has run."""
        ...

    def empty_cache(self) -> None: ...

    def capture(self, run: Callable[[], torch.Tensor], pool: Any) -> tuple[Callable[[], None], torch.Tensor]:
        """``run``'s kernels recorded once as a graph: its ``replay`` (the same kernels on the same
        memory, queued by one call) and the tensor that ``run`` returned, which each replay
        rewrites. ``pool``: a ``graph_pool()`` that graphs which never run at once share."""
        ...

    def graph_pool(self) -> Any: ...


class CudaAccelerator:
    """``torch.cuda``, as the ``Accelerator`` seam: the engine's CUDA path."""

    def is_available(self) -> bool:
        return torch.cuda.is_available()

    def tensor_device(self, index: int) -> torch.device:
        return torch.device("cuda", index)

    def set_device(self, device: torch.device) -> None:
        torch.cuda.set_device(device)

    def current_stream(self, device: torch.device) -> Stream:
        return torch.cuda.current_stream(device)

    def new_stream(self, device: torch.device) -> Stream:
        return torch.cuda.Stream(device)  # type: ignore[no-untyped-call]

    def use_stream(self, stream: Stream) -> AbstractContextManager[Any]:
        return torch.cuda.stream(stream)  # type: ignore[arg-type]

    def event(self, timing: bool) -> Event:
        return torch.cuda.Event(enable_timing=timing, blocking=True)  # type: ignore[no-untyped-call]

    def upload(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        # pin_memory() copies into a block of torch's caching host allocator, which records
        # the copy below and hands the block out again only once that copy is done.
        return tensor.pin_memory().to(device, non_blocking=True)

    def pinned_empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(tuple(shape), dtype=dtype, pin_memory=True)

    def keep_for(self, tensor: torch.Tensor, stream: Stream) -> None:
        tensor.record_stream(stream)  # type: ignore[arg-type]

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def capture(self, run: Callable[[], torch.Tensor], pool: Any) -> tuple[Callable[[], None], torch.Tensor]:
        # Once eagerly on a side stream first, as torch asks: the kernels' lazy set-up (cuBLAS
        # handles and workspaces, kernel choices) must not happen during capture.
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = run()
        return graph.replay, out

    def graph_pool(self) -> Any:
        return torch.cuda.graph_pool_handle()


_ACCELERATORS: dict[str, Accelerator] = {"cuda": CudaAccelerator()}


def register(kind: str, accelerator: Accelerator) -> None:
    """Serve DEVICE values of ``kind`` (``kind`` or ``kind:N``) with ``accelerator``."""
    _ACCELERATORS[kind] = accelerator


@dataclass(frozen=True)
class Device:
    """The engine's device: its DEVICE ``name``, where its tensors live, and its accelerator
    (None: the host's own cores, where each operation has finished when it returns)."""

    name: str
    tensors: torch.device
    accelerator: Accelerator | None = None

    @classmethod
    def of(cls, device: torch.device | Device) -> Device:
        """``device`` as a ``Device`` (a torch device's type chooses its accelerator)."""
        if isinstance(device, Device):
            return device
        if device.type not in _ACCELERATORS:
            return cls(str(device), device)
        return cls(str(device), device, _ACCELERATORS[device.type])


def resolve_device(name: str) -> Device:
    """DEVICE's value (``auto``, ``cpu``, ``cuda:1``, or a registered kind) as the engine's device."""
    if name == "auto":
        name = "cuda:0" if torch.cuda.is_available() else "cpu"
    kind, _, index = name.partition(":")
    if kind not in _ACCELERATORS and "." in kind:
        importlib.import_module(kind)  # a plugin: importing it registers its accelerator
    if kind not in _ACCELERATORS:
        return Device(name, torch.device(name))
    accelerator = _ACCELERATORS[kind]
    if not accelerator.is_available():
        raise RuntimeError(f"DEVICE={name} but {kind} is not available")
    return Device(name, accelerator.tensor_device(int(index or 0)), accelerator)


def resolve_dtype(name: str, device: torch.device | Device) -> torch.dtype:
    if name != "auto":
        return _DTYPES[name]
    if Device.of(device).accelerator is not None:
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    return bool(_FAST_BF16_FLAGS & cpu_flags(cpuinfo))


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags, as /proc/cpuinfo names them; none where it cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()
