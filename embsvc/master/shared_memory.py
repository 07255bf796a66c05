"""At start, in the master: how large /dev/shm is, and whether it holds a full queue of the longest requests.

Every request's token ids and vectors live in /dev/shm while it is computed
(gpu_pool/wire/segment.py). A request that finds no room there is refused with
503, so an operator should learn at start, not from refusals, that Docker's
default 64 MiB (or a pod without a memory-backed /dev/shm) is too small.
"""

from __future__ import annotations

import json
import logging
import math

from embsvc.config import Settings
from gpu_pool import shared_memory_needed, shared_memory_space

log = logging.getLogger("embsvc.master.shared_memory")

_MIB = 1 << 20


def check(settings: Settings, engines: int) -> None:
    """Log /dev/shm's size; warn when ``engines`` full queues of MAX_TOKENS-token requests would not fit."""
    now = shared_memory_space()
    dim = _hidden_size(settings)
    needed = shared_memory_needed(engines * settings.max_queue_size, settings.max_tokens, dim) if dim else 0
    fields = {"path": now.path, "size_bytes": now.size, "free_bytes": now.free, "needed_bytes": needed}
    log.info("Shared memory: %s holds %.0f MiB, %.0f MiB free", now.path, now.size / _MIB, now.free / _MIB,
             extra=fields)
    if now.size < needed:
        docker, kubernetes = _suggest(needed)
        one = needed // (engines * settings.max_queue_size) or 1
        log.warning(
            "Shared memory: %s holds %.0f MiB, less than the %.0f MiB that %d queued requests (MAX_QUEUE_SIZE=%d "
            "per engine, %d engine(s)) of MAX_TOKENS=%d tokens with all three kinds need; it holds %d such "
            "requests at once, and a request that finds no room gets 503. For the worst case give it %s: "
            "docker run --shm-size=%s, compose shm_size: %s, or a Kubernetes emptyDir (medium: Memory, "
            "sizeLimit: %s) at /dev/shm (docs/operators.md); or lower MAX_QUEUE_SIZE or MAX_TOKENS",
            now.path, now.size / _MIB, needed / _MIB, engines * settings.max_queue_size, settings.max_queue_size,
            engines, settings.max_tokens, now.size // one, docker, docker, docker, kubernetes, extra=fields)


def _suggest(needed: int) -> tuple[str, str]:
    """A round size that holds ``needed`` bytes, as Docker and Kubernetes write it: ("2g", "2Gi")."""
    mib = 1 << max(0, math.ceil(math.log2(max(needed, 1) / _MIB)))
    return (f"{mib // 1024}g", f"{mib // 1024}Gi") if mib >= 1024 else (f"{mib}m", f"{mib}Mi")


def _hidden_size(settings: Settings) -> int:
    """The model's vector size, from its config.json (0 when it cannot be read: no check)."""
    try:
        config = json.loads((settings.model_path / "config.json").read_text())
        return int(config["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("Shared memory: cannot read hidden_size from %s/config.json (%s); not checking its size",
                    settings.model_path, exc)
        return 0
