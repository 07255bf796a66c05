"""Every setting of the service, read once from the environment (and ``.env``).

``load_settings`` is the only place that looks at the environment; everything
else is handed a frozen ``Settings``.
"""

from __future__ import annotations

import builtins
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

PLACEHOLDER_TOKEN = "your_api_token_here"
DEFAULT_RERANKER_PATH = "./bge-reranker-v2-m3"  # beside MODEL_PATH's default, ./BGE-M3
# RERANKER_PATH's word for "no cross-encoder": a word, not an empty value, since an empty
# value keeps the default for every setting (a variable a compose file passes on unset).
NO_RERANKER = "none"
KINDS = ("dense", "sparse", "colbert")
DTYPES = ("auto", "float32", "float16", "bfloat16", "int8")
DEFAULT_MAX_BATCH_TOKENS = 16384  # tokens in one forward pass when MAX_BATCH_TOKENS is unset
# On a GPU host: twice TEI's 16,384. The full model costs about 0.6 GFLOP a token, so
# a 16,384-token pass is about 20 ms of an H200's half-precision matrix work, while
# what the host does between two passes (answering the last one, starting the next)
# stays about fixed: a longer pass halves the share of time the GPU idles through
# it. Activations cost about 20 kB a token in float16 (0.7 GB at 32,768 tokens),
# little beside the model on any GPU it fits on. bench/gpu/check.py measures the
# engine at 8,192 to 65,536 tokens a pass, to confirm the choice on the device.
CUDA_MAX_BATCH_TOKENS = 32768
# Requests in one pass (BATCH_SIZE) with a GPU engine. A pass of a few short queries
# is bound by launching its ~300 kernels, not by arithmetic, so on a GPU it takes
# about as long with 64 queries as with 8; at 8 a pass, 5,000 queries a second
# would need a pass every 1.6 ms, which a 24-layer pass driven from Python cannot do.
GPU_BATCH_SIZE = 64
# Requests an engine holds (MAX_QUEUE_SIZE) with a GPU engine, TEI's
# max_concurrent_requests: at thousands of answers a second, 50 in flight is a few
# milliseconds of work, and 64 clients with one request each would be refused.
GPU_MAX_QUEUE_SIZE = 512
# A body refused before it was read is read and dropped up to this many times MAX_REQUEST_BYTES
# (embsvc/api/body_drain.py); the web workers read a request whole up to that size too.
DRAIN_FACTOR = 4
# Where the NVIDIA driver shows its GPUs: DEVICE=auto means CUDA on such a host.
_NVIDIA_GPUS = (Path("/proc/driver/nvidia/gpus"), Path("/dev/nvidia0"))
# An origin as browsers send it: scheme://host[:port], no path (the Origin header's form).
_ORIGIN = re.compile(r"https?://[^\s/?#]+")


class ConfigError(ValueError):
    """A setting is missing or malformed; the server refuses to start."""


@dataclass(frozen=True)
class Settings:
    api_tokens: tuple[str, ...]
    model_path: Path
    model_name: str
    model_aliases: tuple[str, ...]
    # The cross-encoder served beside bge-m3 (bge-reranker-v2-m3's layout); None: bge-m3 alone.
    reranker_path: Path | None
    reranker_name: str
    reranker_aliases: tuple[str, ...]
    batch_size: int
    batch_timeout_ms: int
    processing_concurrency: int
    max_queue_size: int
    max_batch_tokens: int  # 0: chosen by the engine
    max_tokens: int
    max_inputs: int
    max_request_bytes: int
    request_timeout_s: float
    # A request being read that brings no byte for read_timeout_s, or is not whole read_deadline_s
    # after its first byte, is answered 408 (embsvc/master/buffered_worker.py).
    read_timeout_s: float
    read_deadline_s: float
    devices: tuple[str, ...]
    dtype: str
    default_return: tuple[str, ...]
    web_concurrency: int
    # Added to each web worker's niceness, so that an engine's threads win a core they share
    # with a web worker (a query pass's two threads wait for each other at every step).
    web_worker_nice: int
    log_level: str
    log_format: str
    bind: str
    allowed_origins: tuple[str, ...]  # CORS: ("*",) for any origin; empty: none
    # Lanes (gpu_pool/engine/lanes.py): a request of at most this many tokens is interactive
    # unless it says otherwise; a bulk pass's layer takes at most the wait; bulk keeps its share.
    interactive_max_tokens: int
    interactive_max_wait_ms: int
    bulk_share: float
    # Long inputs (embsvc/core/windows.py): whether a text past max_length is cut into windows
    # rather than truncated when a request does not say, and the most tokens a request so cut
    # may hold in all, its windows' special tokens included.
    chunk_long_inputs: bool = False
    max_request_tokens: int = 131072
    # MAX_BATCH_TOKENS when unset: by device (CUDA_MAX_BATCH_TOKENS with a GPU engine).
    default_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS

    def model_names(self) -> tuple[str, ...]:
        return (self.model_name, *self.model_aliases)

    def reranker_names(self) -> tuple[str, ...]:
        """The names a request's ``model`` gives the cross-encoder (also where none is served,
        so that such a request is told so rather than that the name is unknown)."""
        return (self.reranker_name, *self.reranker_aliases)

    def served_models(self) -> tuple[str, ...]:
        """The served models' names: bge-m3's, then the cross-encoder's where there is one."""
        return (self.model_name, self.reranker_name) if self.reranker_path else (self.model_name,)

    def batch_tokens(self) -> int:
        """Tokens in one forward pass, as the engines are given them."""
        return self.max_batch_tokens or self.default_batch_tokens


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | None = ".env") -> Settings:
    env: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        env.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    env.update(os.environ if environ is None else environ)
    return _parse(env)


def _parse(env: Mapping[str, str]) -> Settings:
    get = _Reader(env)
    devices = get.list("DEVICE", "auto")
    gpu_engines = count_gpu_engines(devices, nvidia_gpu_present())
    return Settings(
        api_tokens=_tokens(env.get("API_TOKEN", "")),
        model_path=Path(get.str("MODEL_PATH", "./BGE-M3")),
        model_name=get.str("MODEL_NAME", "BAAI/bge-m3"),
        model_aliases=get.list("MODEL_ALIASES", "bge-m3"),
        reranker_path=_reranker_path(get.str("RERANKER_PATH", DEFAULT_RERANKER_PATH)),
        reranker_name=get.str("RERANKER_NAME", "BAAI/bge-reranker-v2-m3"),
        reranker_aliases=get.list("RERANKER_ALIASES", "bge-reranker-v2-m3"),
        batch_size=get.int("BATCH_SIZE", GPU_BATCH_SIZE if gpu_engines else 8, 1),
        batch_timeout_ms=get.int("BATCH_TIMEOUT_MS", 100, 0),
        processing_concurrency=get.int("PROCESSING_CONCURRENCY", 2, 1),
        max_queue_size=get.int("MAX_QUEUE_SIZE", GPU_MAX_QUEUE_SIZE if gpu_engines else 50, 1),
        max_batch_tokens=get.int("MAX_BATCH_TOKENS", 0, 0),
        max_tokens=get.int("MAX_TOKENS", 8192, 2),
        max_inputs=get.int("MAX_INPUTS", 256, 1),
        max_request_bytes=get.int("MAX_REQUEST_BYTES", 8 * 1024 * 1024, 1024),
        request_timeout_s=get.float("REQUEST_TIMEOUT_S", 120.0),
        read_timeout_s=get.float("READ_TIMEOUT_S", 5.0),
        read_deadline_s=get.float("READ_DEADLINE_S", 60.0),
        devices=devices,
        dtype=get.choice("DTYPE", "auto", DTYPES),
        default_return=_kinds(get.list("DEFAULT_RETURN", ",".join(KINDS))),
        web_concurrency=get.int("WEB_CONCURRENCY", default_workers(len(os.sched_getaffinity(0)), gpu_engines), 1),
        web_worker_nice=get.int("WEB_WORKER_NICE", 5, 0),
        log_level=get.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
        log_format=get.choice("LOG_FORMAT", "json", ("json", "text")),
        bind=get.str("BIND", "0.0.0.0:8000"),
        allowed_origins=_origins(get.list("ALLOWED_ORIGINS", "")),
        interactive_max_tokens=get.int("INTERACTIVE_MAX_TOKENS", 128, 0),
        interactive_max_wait_ms=get.int("INTERACTIVE_MAX_WAIT_MS", 20, 1),
        bulk_share=_share(get.float("BULK_SHARE", 0.5)),
        chunk_long_inputs=get.bool("CHUNK_LONG_INPUTS", False),
        max_request_tokens=get.int("MAX_REQUEST_TOKENS", 131072, 2),
        default_batch_tokens=CUDA_MAX_BATCH_TOKENS if gpu_engines else DEFAULT_MAX_BATCH_TOKENS,
    )


def default_workers(cores: int, gpu_engines: int) -> int:
    """WEB_CONCURRENCY when unset. With CPU engines only: 2 to 4. Web workers only parse,
    tokenize and serialize, each with many threads that wait on the engine, and a
    CPU engine needs the other cores. With GPU engines: every core but two per engine
    (its device thread and its reader and planner). A GPU answers thousands of short
    queries a second, and then each request's Python (HTTP, JSON, tokenizing, about
    1 ms of one core) is the limit: a worker holds the GIL, so it uses one core at most."""
    if gpu_engines == 0:
        return max(2, min(4, cores))
    return max(2, min(32, cores - 2 * gpu_engines))


def count_gpu_engines(devices: tuple[str, ...], nvidia_present: bool) -> int:
    """Engines that will run on a GPU: ``cuda``/``cuda:N`` entries, and ``auto`` where a GPU is present."""
    return sum(d.startswith("cuda") or (d == "auto" and nvidia_present) for d in devices)


def nvidia_gpu_present() -> bool:
    """Whether the NVIDIA driver shows a GPU here (without importing torch, which the web side never does)."""
    folder, device = _NVIDIA_GPUS
    try:
        return device.exists() or any(folder.iterdir())
    except OSError:
        return False


def _reranker_path(value: str) -> Path | None:
    return None if value.lower() == NO_RERANKER else Path(value)


def _share(value: float) -> float:
    if value > 1:
        raise ConfigError(f"BULK_SHARE must be a fraction above 0 and at most 1, got {value:g}")
    return value


def _tokens(raw: str) -> tuple[str, ...]:
    tokens = tuple(t.strip() for t in raw.split(",") if t.strip())
    if not tokens:
        raise ConfigError("API_TOKEN is not set: set it to a secret (a comma-separated list allows rotation)")
    if PLACEHOLDER_TOKEN in tokens:
        raise ConfigError(f"API_TOKEN is still the placeholder {PLACEHOLDER_TOKEN!r}: set a real secret")
    return tokens


def _kinds(names: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in KINDS]
    if unknown or not names:
        raise ConfigError(f"DEFAULT_RETURN must list some of {', '.join(KINDS)}; got {','.join(names)!r}")
    return tuple(k for k in KINDS if k in names)


def _origins(origins: tuple[str, ...]) -> tuple[str, ...]:
    if origins == ("*",):
        return origins
    wrong = [o for o in origins if not _ORIGIN.fullmatch(o)]
    if wrong:
        raise ConfigError(f"ALLOWED_ORIGINS must be * alone or a comma-separated list of origins such as "
                          f"https://app.example.com (scheme, host, optional port; no path); got {wrong[0]!r}")
    return origins


class _Reader:
    # Past the method ``str``, the class body's ``str`` is that method: annotations say ``builtins.str``.
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def str(self, name: str, default: str) -> str:
        value = self.env.get(name, "").strip()
        return value or default

    def list(self, name: builtins.str, default: builtins.str) -> tuple[builtins.str, ...]:
        return tuple(p.strip() for p in self.str(name, default).split(",") if p.strip())

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        raw = self.str(name, "true" if default else "false").lower()
        if raw not in ("true", "false", "1", "0"):
            raise ConfigError(f"{name} must be true or false, got {raw!r}")
        return raw in ("true", "1")

    def int(self, name: builtins.str, default: int, minimum: int) -> int:
        raw = self.str(name, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")
        return value

    def float(self, name: builtins.str, default: float) -> float:
        raw = self.str(name, str(default))
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {raw!r}")
        return value

    def choice(self, name: builtins.str, default: builtins.str,
               choices: tuple[builtins.str, ...]) -> builtins.str:
        value = self.str(name, default)
        for choice in choices:
            if value.lower() == choice.lower():
                return choice
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
