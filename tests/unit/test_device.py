import pytest
import torch

from gpu_pool.model.device import cpu_has_fast_bf16, resolve_device, resolve_dtype


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
        assert resolve_device("auto") == torch.device("cuda:0")
        return
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda:1")
