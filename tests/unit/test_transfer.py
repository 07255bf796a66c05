"""Host <-> device copies of a pass: on the CPU nothing moves and nothing changes; on CUDA
(the ``gpu`` tests, run by bench/gpu/check.sh) ids go through pinned memory and outputs come
back asynchronously, with the same numbers. A whole pass's outputs: tests/integration/test_model.py."""

from __future__ import annotations

import time
from typing import ClassVar

import numpy as np
import pytest
import torch

from gpu_pool.model import transfer
from gpu_pool.model.device import Device
from gpu_pool.model.transfer import HostCopy, PassTimer, to_device

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_to_device_makes_indices_int64_or_the_type_asked_for():
    assert to_device(np.array([1, 2], dtype=np.int32), torch.device("cpu")).dtype == torch.int64
    assert to_device(np.array([1, 2], dtype=np.uint16), torch.device("cpu")).dtype == torch.int64
    assert to_device(np.array([0, 3], dtype=np.int64), torch.device("cpu"), np.int32).dtype == torch.int32
    ids = np.array([5, 6, 7], dtype=np.int64)
    tensor = to_device(ids, torch.device("cpu"))
    assert tensor.tolist() == [5, 6, 7]
    assert tensor.data_ptr() == ids.ctypes.data  # no copy on the CPU


def test_host_copy_on_the_cpu_is_float32_numpy_at_once_float16_kept():
    source = torch.ones(2, 3, dtype=torch.bfloat16)
    copy = HostCopy([source, None, torch.zeros(4, dtype=torch.float16)], torch.device("cpu"))
    source.zero_()  # after the copy was made: not seen, the arrays were made at once
    dense, sparse, colbert = copy.wait()
    assert (dense == 1).all()
    assert sparse is None
    assert dense.dtype == np.float32 and dense.shape == (2, 3)
    assert colbert.dtype == np.float16 and colbert.shape == (4,)


def test_host_copy_of_nothing():
    assert HostCopy([None, None, None], torch.device("cpu")).wait() == [None, None, None]


def test_a_pass_timer_on_the_cpu_is_the_hosts_clock():
    timer = PassTimer(torch.device("cpu"))
    time.sleep(0.02)
    timer.stop()
    time.sleep(0.05)  # after the stop: not counted
    assert 0.02 <= timer.seconds() < 0.05


class FakeEvent:
    """Stands for torch.cuda.Event: records how it was made and how it was waited for; the
    device has not reached it when first asked."""

    made: ClassVar[list[FakeEvent]] = []

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> None:
        self.timing, self.blocking, self.waits = enable_timing, blocking, []
        FakeEvent.made.append(self)

    def record(self, stream: object = None) -> None:
        self.stream = stream

    def synchronize(self) -> None:
        self.waits.append("synchronize")

    def query(self) -> bool:
        self.waits.append("query")
        return False

    def elapsed_time(self, end: FakeEvent) -> float:
        return 5.0


@pytest.fixture
def fake_cuda_events(monkeypatch):
    FakeEvent.made = []
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: f"compute stream of {device}")
    return FakeEvent.made


def test_the_host_sleeps_on_blocking_events_when_it_waits_for_the_device(fake_cuda_events):
    timer = PassTimer(torch.device("cuda:0"))
    timer.keep_ahead(0)  # a step queued, and the host may be no step ahead of the device
    timer.sync()
    timer.stop()
    assert timer.seconds() == 0.005
    began, paced, synced, ended = fake_cuda_events
    assert began.timing and ended.timing and not paced.timing and not synced.timing
    assert all(event.blocking for event in fake_cuda_events), "a default event's synchronize spins a core"
    assert paced.waits == ["query", "synchronize"]  # not reached yet: one sleep, no polling
    assert ended.waits == synced.waits == ["synchronize"]  # one sleep each, no polling
    assert {event.stream for event in fake_cuda_events} == {"compute stream of cuda:0"}


def test_a_host_keeps_at_most_the_steps_asked_for_queued(fake_cuda_events):
    timer = PassTimer(torch.device("cuda:0"))
    for _ in range(5):
        timer.keep_ahead(2)
    _, *steps = fake_cuda_events
    # Each step's event waited for once two later steps were queued: the last two still run.
    assert [event.waits for event in steps] == [["query", "synchronize"]] * 3 + [[], []]


# -- on the GPU machine ------------------------------------------------------------


@pytest.mark.gpu
@CUDA
def test_cuda_copies_are_asynchronous_and_exact():
    device = torch.device("cuda:0")
    ids = np.arange(10_000, dtype=np.int64)
    on_device = to_device(ids, device)
    assert on_device.device.type == "cuda"
    assert torch.equal(on_device.cpu(), torch.from_numpy(ids))
    source = torch.randn(4096, 1024, device=device, dtype=torch.float16)
    copy = HostCopy([source, None], device)
    got, nothing = copy.wait()
    copies = transfer.copy_stream(Device.of(device).accelerator, device)
    assert copies.query() and nothing is None  # every copy done once wait returns
    assert got.dtype == np.float16  # float16 crosses as it is: half the bytes
    np.testing.assert_array_equal(got, source.cpu().numpy())


@pytest.mark.gpu
@CUDA
def test_a_pass_timer_on_cuda_times_the_kernels_not_their_queueing():
    device = torch.device("cuda:0")
    a = torch.randn(8192, 8192, device=device, dtype=torch.float16)
    b = a @ a  # cuBLAS's set-up, before the clocks
    torch.cuda.synchronize()
    timer = PassTimer(device)
    queued = time.perf_counter()
    for _ in range(20):
        b = a @ a  # 22 TFLOP in all: tens of milliseconds even on an H200
    queued = time.perf_counter() - queued
    timer.stop()
    seconds = timer.seconds()  # waits for the kernels
    assert seconds > 2 * queued, (seconds, queued)
    assert b.shape == a.shape
