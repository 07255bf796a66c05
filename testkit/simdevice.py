"""A simulated CUDA device: the engine's CUDA path, run on this CPU with a device clock.

    DEVICE=testkit.simdevice:0      (an engine process: gpu_pool.model.device imports this module,
                                     which registers the accelerator under its own name)
    with simdevice.installed() as sim: ...      (in this process: tests and bench/sim.py)

Why this design: gpu_pool reaches an accelerator through one seam only
(``gpu_pool.model.device.Accelerator``: streams, blocking events, pinned buffers,
asynchronous copies, the current device, the memory cache), so a second implementation of
that seam runs every line of the CUDA path, and the engine has no branch of its own for a
simulation. What the seam does not see, the kernels, this module sees through a torch
dispatch mode, pushed on the thread that makes the device its current one (``set_device``,
as ``torch.cuda.set_device`` is per thread too): each aten operation that thread runs is
computed at once on the CPU (real outputs, so parity tests hold; or only its shape, on the
``meta`` device, for timing runs of the full-size model) and *queued* on the simulated
device's clock. The clock is the host's own (``time.perf_counter``), so host and device race
as they do on a GPU: a kernel starts when its stream and its engine are free and takes its
launch latency plus the longer of its FLOPs at the set rate and its bytes at the memory's
bandwidth (a copy on the copy stream: its bytes over the host link). Events record the tail
of a stream; ``query`` compares it with the clock; ``synchronize`` sleeps until then.

Faults on demand (``Settings``): a matrix product whose output exceeds ``memory_bytes`` (what
the weights leave free for a pass's activations) raises ``torch.OutOfMemoryError`` as CUDA's
allocator does; a gather of ``fault_token`` (the embedding lookup of a pass that holds it) is
an illegal memory access, reported as CUDA reports it, by the next call, and by every later one
(the context is lost).

The engine on it: the host's own arithmetic runs on one thread (``set_device``); on the
``meta`` device the costliest operations' outputs are made directly (``_SHAPES``), and the
simulation's own host time is counted apart (``SimDevice.overhead_s``).

Defaults: an H200, 788 TFLOP/s dense bfloat16/float16 at 40%, 4.8 TB/s HBM at 60%, 5 µs per
kernel launch, 50 GB/s over PCIe. Environment (read when the module is imported, i.e. when
the engine resolves DEVICE): SIMDEVICE_TFLOPS, SIMDEVICE_LAUNCH_US, SIMDEVICE_COMPUTE
(cpu|meta), SIMDEVICE_MEMORY_BYTES, SIMDEVICE_FAULT_TOKEN, SIMDEVICE_SLOWDOWN.

What it does not model: the varlen flash kernel (tensors live on the CPU, so attention runs
per length, as CUDA does in float32: more launches per layer than varlen), caching-allocator
fragmentation, and a CUDA graph's one launch (``capture``'s replay runs the recorded work again,
operation by operation).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from gpu_pool.model import device as device_module

KIND = __name__  # DEVICE=testkit.simdevice:N
ILLEGAL_ADDRESS = "CUDA error: an illegal memory access was encountered (simulated device)"

_aten = torch.ops.aten
# Operations that make no kernel on a GPU: allocations, views and metadata.
_NO_KERNEL = {_aten.empty.memory_format, _aten.empty_strided.default, _aten.new_empty.default,
              _aten._unsafe_view.default, _aten.lift_fresh.default, _aten.detach.default, _aten.alias.default,
              _aten.record_stream.default}
_LINEAR = {_aten.linear.default, *(op.default for op in (getattr(torch.ops.mkldnn, "_linear_pointwise", None),)
                                   if op is not None)}
_ATTENTION = {_aten.scaled_dot_product_attention.default,
              *(op.default for name in ("_scaled_dot_product_flash_attention_for_cpu",)
                if (op := getattr(_aten, name, None)) is not None)}


# The outputs of a timing run's costliest operations, made without torch's meta functions
# (Python references: 1-6 ms each, against ~10 µs for the empty tensor).
_SHAPES: dict[Any, Any] = {
    _aten.linear.default: lambda x, weight, *_: x.new_empty((*x.shape[:-1], weight.shape[0])),
    _aten.layer_norm.default: lambda x, *_: torch.empty_like(x),
    _aten.gelu.default: lambda x, *_: torch.empty_like(x),
    _aten.add.Tensor: lambda a, b, *_: a.new_empty(torch.broadcast_shapes(a.shape, getattr(b, "shape", ()))),
    _aten.scaled_dot_product_attention.default: lambda q, k, v, *_: q.new_empty((*q.shape[:-1], v.shape[-1])),
}


@dataclass(frozen=True)
class Rates:
    flops: float = 788e12 * 0.4  # dense half precision, at the share of peak a good kernel gets
    launch_s: float = 5e-6  # per kernel
    memory_bytes_per_s: float = 4.8e12 * 0.6
    link_bytes_per_s: float = 50e9  # host <-> device


@dataclass(frozen=True)
class Settings:
    rates: Rates = field(default_factory=Rates)
    compute: str = "cpu"  # "meta": shapes only, for timing runs
    memory_bytes: int = 0  # the most one matrix product may allocate (0: no limit)
    fault_token: int | None = None
    # Every device time multiplied by this: this host's Python runs an operation tens of times
    # slower than a GPU host's (the dispatch mode's own cost included), so a run at full speed
    # would be host-bound where a GPU's is not; a run at 40 keeps their ratio, and its figures
    # divided by 40 are the device's (bench/sim.py).
    slowdown: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        tflops = float(environ.get("SIMDEVICE_TFLOPS", 788 * 0.4))
        launch_us = float(environ.get("SIMDEVICE_LAUNCH_US", 5))
        token = environ.get("SIMDEVICE_FAULT_TOKEN", "").strip()
        return cls(rates=Rates(flops=tflops * 1e12, launch_s=launch_us / 1e6),
                   compute=environ.get("SIMDEVICE_COMPUTE", "cpu"),
                   memory_bytes=int(environ.get("SIMDEVICE_MEMORY_BYTES", 0)),
                   fault_token=int(token) if token else None,
                   slowdown=float(environ.get("SIMDEVICE_SLOWDOWN", 1)))


class _Engine:
    """One of the device's engines (the SMs, or the copy engine): one kernel at a time."""

    def __init__(self) -> None:
        self.free_at = 0.0


class SimStream:
    def __init__(self, device: SimDevice, engine: _Engine) -> None:
        self.device, self.engine, self.tail = device, engine, 0.0  # tail: when its last work ends

    def wait_stream(self, stream: SimStream) -> None:
        self.tail = max(self.tail, stream.tail)

    def query(self) -> bool:
        self.device.raise_if_faulted()
        return self.device.now() >= self.tail


class SimEvent:
    def __init__(self, device: SimDevice, timing: bool) -> None:
        self.device, self.timing, self.at = device, timing, 0.0
        device.counts["events"] += 1

    def record(self, stream: SimStream | None = None) -> None:
        stream = stream or self.device.current_stream(None)
        self.at = max(stream.tail, self.device.now())

    def query(self) -> bool:
        self.device.raise_if_faulted()
        return self.device.now() >= self.at

    def synchronize(self) -> None:
        self.device.raise_if_faulted()
        left = self.at - self.device.now()
        if left > 0:
            self.device.counts["sleeps"] += 1
            time.sleep(left)
        self.device.raise_if_faulted()

    def elapsed_time(self, end_event: SimEvent) -> float:
        if not (self.timing and end_event.timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        return (end_event.at - self.at) * 1000


class _Kernels(TorchDispatchMode):
    """Each operation of its thread: computed now, queued on the device's clock."""

    def __init__(self, device: SimDevice) -> None:
        super().__init__()
        self.device = device

    def __torch_dispatch__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:
        entered = time.thread_time()  # CPU time: others' processes on this host's cores do not count
        kwargs = kwargs or {}
        device = self.device
        device.raise_if_faulted()
        if func in _NO_KERNEL or func.is_view:
            return func(*args, **kwargs)
        if func is _aten.copy_.default and args[1].is_meta and not args[0].is_meta:
            out = args[0].zero_()  # a timing run's outputs reach the host as zeros
        elif func in _SHAPES and args[0].is_meta:
            out = _SHAPES[func](*args)  # torch's meta functions of these take milliseconds each
        else:
            ran = time.thread_time()
            out = func(*args, **kwargs)
            entered += time.thread_time() - ran  # the arithmetic is the host's, not the simulation's
        device.check(func, args, out)
        device.queue(device.kernel_seconds(func, args, kwargs, out))
        device.overhead_s += time.thread_time() - entered
        return out


class SimDevice:
    """The ``Accelerator`` of a simulated GPU (gpu_pool/model/device.py)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self._compute, self._copy = _Engine(), _Engine()
        self._default = SimStream(self, self._compute)
        self._local = threading.local()  # per thread: its dispatch mode and its current stream
        self.fault: str | None = None
        self.counts = {"kernels": 0, "copies": 0, "events": 0, "sleeps": 0, "emptied": 0}
        self.busy_s = 0.0  # the device's time spent on kernels and copies
        self.overhead_s = 0.0  # the host's CPU time spent simulating (not a GPU host's)

    # -- the Accelerator seam --------------------------------------------------

    def is_available(self) -> bool:
        return True

    def tensor_device(self, index: int) -> torch.device:
        return torch.device(self.settings.compute)

    def set_device(self, device: torch.device) -> None:
        # The arithmetic on one thread: the host's time then is its own work, not OpenMP's
        # threads waiting for cores that others hold (a tiny pass took 10 times longer on two).
        torch.set_num_threads(1)
        if getattr(self._local, "mode", None) is None:
            self._local.mode = _Kernels(self)
            self._local.mode.__enter__()

    def current_stream(self, device: torch.device | None) -> SimStream:
        stream: SimStream | None = getattr(self._local, "stream", None)
        return stream or self._default

    def new_stream(self, device: torch.device) -> SimStream:
        return SimStream(self, self._copy)

    @contextlib.contextmanager
    def use_stream(self, stream: SimStream) -> Iterator[None]:
        previous = getattr(self._local, "stream", None)
        self._local.stream = stream
        try:
            yield
        finally:
            self._local.stream = previous

    def event(self, timing: bool) -> SimEvent:
        return SimEvent(self, timing)

    def upload(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        self.raise_if_faulted()
        self.queue(self.settings.rates.launch_s + tensor.nbytes / self.settings.rates.link_bytes_per_s, copy=True)
        return tensor.to(device)

    def pinned_empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(tuple(shape), dtype=dtype)

    def keep_for(self, tensor: torch.Tensor, stream: SimStream) -> None:
        """Nothing to keep: each operation's memory is written when it is queued."""

    def empty_cache(self) -> None:
        self.counts["emptied"] += 1

    def capture(self, run: Callable[[], torch.Tensor], pool: Any) -> tuple[Callable[[], None], torch.Tensor]:
        """A graph as a replay does it: the same work again, over the same buffers, into the
        tensor the recording returned (each operation queued as a kernel, as they are here)."""
        out = run()

        def replay() -> None:
            out.copy_(run())

        return replay, out

    def graph_pool(self) -> Any:
        return None

    # -- the device's clock ------------------------------------------------------

    def now(self) -> float:
        return time.perf_counter()

    def queue(self, seconds: float, copy: bool = False) -> None:
        """Work of ``seconds`` on the current stream: it starts once the stream and its engine are free."""
        stream = self.current_stream(None)
        engine = stream.engine
        seconds *= self.settings.slowdown
        start = max(self.now(), stream.tail, engine.free_at)
        stream.tail = engine.free_at = start + seconds
        self.busy_s += seconds
        self.counts["copies" if copy or engine is self._copy else "kernels"] += 1

    def kernel_seconds(self, func: Any, args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> float:
        rates = self.settings.rates
        moved = sum(_nbytes(a) for a in args) + _nbytes(out)
        if self.current_stream(None).engine is self._copy:
            return rates.launch_s + moved / 2 / rates.link_bytes_per_s
        return rates.launch_s + max(_flops(func, args, kwargs, out) / rates.flops, moved / rates.memory_bytes_per_s)

    def check(self, func: Any, args: Sequence[Any], out: Any) -> None:
        """The faults asked for: out of memory, or an illegal address."""
        limit = self.settings.memory_bytes
        if limit and (func in _LINEAR or func._overloadpacket in flop_registry) and _nbytes(out) > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {_nbytes(out)} bytes; the simulated "
                                         f"device has {limit}")
        token = self.settings.fault_token
        gathers = token is not None and func is _aten.index.Tensor and not args[0].is_meta
        if gathers and any(isinstance(i, torch.Tensor) and bool((i == token).any()) for i in args[1]):
            self.fault = ILLEGAL_ADDRESS  # found at the next synchronisation, as on a GPU

    def raise_if_faulted(self) -> None:
        if self.fault is not None:
            raise RuntimeError(self.fault)

    def release_thread(self) -> None:
        """Stop simulating the calling thread's operations (``set_device`` started it)."""
        mode = getattr(self._local, "mode", None)
        if mode is not None:
            mode.__exit__(None, None, None)
            self._local.mode = None


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def _flops(func: Any, args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> float:
    """A matrix product's or attention's FLOPs (0: neither). The mode sees some composite
    operations whole (``linear``, ``scaled_dot_product_attention``), others decomposed."""
    if func in _LINEAR:  # input [..., k], weight [n, k] (prepacked or not)
        source, weight = args[0], args[1]
        return 2.0 * source.numel() * weight.shape[0]
    if func in _ATTENTION:  # q, k: [batch, heads, length, head_dim]
        q, k = args[0], args[1]
        return 4.0 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1]
    count = flop_registry.get(func._overloadpacket)
    return 0.0 if count is None else float(count(*args, **kwargs, out_val=out))


@contextlib.contextmanager
def installed(settings: Settings | None = None) -> Iterator[SimDevice]:
    """A fresh simulated device, registered as DEVICE=testkit.simdevice, for this process; the
    calling thread stops being simulated on the way out."""
    sim = SimDevice(settings)
    previous, threads = device_module._ACCELERATORS.get(KIND), torch.get_num_threads()
    device_module.register(KIND, sim)
    try:
        yield sim
    finally:
        sim.release_thread()
        torch.set_num_threads(threads)
        if previous is not None:
            device_module.register(KIND, previous)


# Imported by the engine when it resolves DEVICE=testkit.simdevice[:N]: registering is the plugin's entry point.
device_module.register(KIND, SimDevice(Settings.from_env(os.environ)))
