import sys
import types
from pathlib import Path

import pytest
import torch

from gpu_pool.model.device import Device, cpu_has_fast_bf16, resolve_device, resolve_dtype


@pytest.mark.parametrize("flags, fast", [("fpu avx512f avx512_bf16 sse", True), ("fpu amx_bf16 amx_tile", True),
                                         ("fpu avx2 avx512f", False)])
def test_bf16_detection_reads_cpu_flags(tmp_path, flags, fast):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_has_fast_bf16(cpuinfo) is fast


def test_explicit_dtype_wins_and_cuda_auto_is_float16():
    assert resolve_dtype("float32", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda:0")) is torch.float16
    expected = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) is expected


def test_auto_device_and_cuda_without_cuda():
    if torch.cuda.is_available():
        assert resolve_device("auto").tensors == torch.device("cuda:0")
        return
    assert resolve_device("auto").tensors == torch.device("cpu")
    assert resolve_device("auto").accelerator is None
    with pytest.raises(RuntimeError, match="cuda is not available"):
        resolve_device("cuda:1")


def test_each_engine_makes_its_cuda_device_the_current_one(monkeypatch):
    """DEVICE=cuda:0,cuda:1: the second engine's context is on GPU 1 alone, none on GPU 0."""
    from gpu_pool.model import load

    current: list[torch.device] = []
    current_at_load: list[list[torch.device]] = []  # the devices made current before each model was made
    threads: list[int] = []
    switch_intervals: list[float] = []
    monkeypatch.setattr(load, "resolve_device", lambda name: Device.of(torch.device(name)))
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    monkeypatch.setattr(sys, "setswitchinterval", switch_intervals.append)

    class Loaded:
        attention = types.SimpleNamespace(path="varlen", kernel_name="", reason="a fake")
        dim, device_name, dtype_name, products, graphs = 8, "a device", "a dtype", "F.linear", None

        def __init__(self, path, device, dtype, threads):
            current_at_load.append(list(current))

    monkeypatch.setattr(load, "M3Model", Loaded)
    load.load(Path("/nowhere"), "cuda:1", "auto", 16)
    load.load(Path("/nowhere"), "cpu", "float32", 16)
    # The CUDA engine's device before its model was made there; a CPU engine touches none.
    assert current_at_load == [[torch.device("cuda:1")], [torch.device("cuda:1")]]
    # A GPU engine's host only queues kernels: two torch threads, and a short GIL switch
    # interval so that its device thread keeps none of the others waiting long.
    assert threads == [load.ACCELERATOR_THREADS, 16] == [2, 16]
    assert switch_intervals == [load.ACCELERATOR_SWITCH_INTERVAL_S] and switch_intervals[0] <= 0.001


def test_a_device_kind_that_names_a_module_is_imported_and_its_accelerator_serves_it(tmp_path, monkeypatch):
    """DEVICE=package.module:N: the module registers its accelerator on import (testkit/simdevice.py does)."""
    from gpu_pool.model import device as device_module

    monkeypatch.setattr(device_module, "_ACCELERATORS", dict(device_module._ACCELERATORS))
    (tmp_path / "fake_accelerators").mkdir()
    (tmp_path / "fake_accelerators" / "__init__.py").write_text("")
    (tmp_path / "fake_accelerators" / "one.py").write_text(
        "import torch\n"
        "from gpu_pool.model.device import register\n"
        "class One:\n"
        "    def is_available(self): return True\n"
        "    def tensor_device(self, index): return torch.device('cpu')\n"
        "register(__name__, One())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    device = resolve_device("fake_accelerators.one:3")
    assert type(device.accelerator).__name__ == "One"
    assert device.name == "fake_accelerators.one:3" and device.tensors == torch.device("cpu")
    assert resolve_dtype("auto", device) is torch.float16  # an accelerator's default, as CUDA's
    assert Device.of(torch.device("cpu")).accelerator is None
