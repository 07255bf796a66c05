"""Defaults that depend on whether the engines run on a GPU: WEB_CONCURRENCY, MAX_BATCH_TOKENS,
BATCH_SIZE and MAX_QUEUE_SIZE. A host with CPU engines only keeps the defaults it always had."""

from __future__ import annotations

import os

import pytest

from embsvc import config
from embsvc.config import (
    CUDA_MAX_BATCH_TOKENS,
    DEFAULT_MAX_BATCH_TOKENS,
    GPU_BATCH_SIZE,
    GPU_MAX_QUEUE_SIZE,
    count_gpu_engines,
    default_workers,
    load_settings,
)

BASE = {"API_TOKEN": "secret"}
CORES = len(os.sched_getaffinity(0))


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(config, "nvidia_gpu_present", lambda: False)


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.setattr(config, "nvidia_gpu_present", lambda: True)


@pytest.mark.parametrize("cores, workers", [(1, 2), (2, 2), (3, 3), (16, 4), (64, 4)])
def test_cpu_hosts_keep_two_to_four_workers(cores, workers):
    assert default_workers(cores, gpu_engines=0) == workers


@pytest.mark.parametrize("cores, engines, workers", [(16, 1, 14), (16, 2, 12), (8, 1, 6), (2, 1, 2), (128, 1, 32)])
def test_gpu_hosts_give_the_web_workers_every_core_but_two_per_engine(cores, engines, workers):
    assert default_workers(cores, engines) == workers


@pytest.mark.parametrize("devices, present, engines", [
    (("cpu",), True, 0), (("auto",), False, 0), (("auto",), True, 1), (("cuda",), False, 1),
    (("cuda:0", "cuda:0"), False, 2), (("cpu", "cuda:1"), True, 1), (("cpu", "cpu"), True, 0)])
def test_gpu_engines_are_the_cuda_entries_and_auto_where_a_gpu_is_present(devices, present, engines):
    assert count_gpu_engines(devices, present) == engines


def test_a_cpu_host_keeps_its_defaults(no_gpu):
    s = load_settings(BASE, env_file=None)
    assert s.batch_tokens() == DEFAULT_MAX_BATCH_TOKENS == 16384
    assert (s.batch_size, s.max_queue_size) == (8, 50)
    assert s.web_concurrency == max(2, min(4, CORES))


def test_explicit_cpu_devices_keep_cpu_defaults_on_a_gpu_host(gpu):
    s = load_settings({**BASE, "DEVICE": "cpu"}, env_file=None)
    assert s.batch_tokens() == DEFAULT_MAX_BATCH_TOKENS
    assert s.web_concurrency == max(2, min(4, CORES))


@pytest.mark.parametrize("env", [{"DEVICE": "cuda:0"}, {}])
def test_gpu_engines_get_the_gpu_defaults(gpu, env):
    s = load_settings({**BASE, **env}, env_file=None)
    assert s.batch_tokens() == CUDA_MAX_BATCH_TOKENS == 32768
    assert s.max_batch_tokens == 0  # still "unset" for /stats
    assert (s.batch_size, s.max_queue_size) == (GPU_BATCH_SIZE, GPU_MAX_QUEUE_SIZE) == (64, 512)
    assert s.web_concurrency == default_workers(CORES, 1)


def test_settings_win_over_the_gpu_defaults(gpu):
    env = {"DEVICE": "cuda", "MAX_BATCH_TOKENS": "8192", "WEB_CONCURRENCY": "3", "BATCH_SIZE": "4",
           "MAX_QUEUE_SIZE": "20"}
    s = load_settings({**BASE, **env}, env_file=None)
    assert (s.batch_tokens(), s.web_concurrency, s.batch_size, s.max_queue_size) == (8192, 3, 4, 20)


def test_nvidia_gpus_are_found_by_the_driver_files(tmp_path, monkeypatch):
    gpus, device = tmp_path / "gpus", tmp_path / "nvidia0"
    monkeypatch.setattr(config, "_NVIDIA_GPUS", (gpus, device))
    assert not config.nvidia_gpu_present()  # neither is there
    gpus.mkdir()
    assert not config.nvidia_gpu_present()  # the driver, without a GPU
    (gpus / "0000:01:00.0").mkdir()
    assert config.nvidia_gpu_present()
    monkeypatch.setattr(config, "_NVIDIA_GPUS", (tmp_path / "none", device))
    device.touch()
    assert config.nvidia_gpu_present()
