"""The engine pool: the processes that own the model, and how web workers reach them.

Runs in:      the gunicorn master (``pool``), web workers (``client``, ``results``, ``stats``),
              engine processes (``engine/``, ``model/``); ``wire/`` on both sides of the pipes.
May import:   numpy and the standard library, ``runtime``; torch only in ``model/``; never embsvc or falcon.
Owns:         the model, batching, shared memory, the protocol between worker and engine.
Entry points: ``EnginePool`` (master), ``EngineClient`` (web worker), ``engine.main.run`` (engine process).

Data flow (one engine shown; a pool has one per device)::

    web worker (slot k)                        engine process
    ───────────────────                        ──────────────
    tokenize, create Segment ──Job──> requests ──> reader thread: attach Segment,
      (ids in shared memory)          (pipe)        queue its inputs (JobTable)
                                                   planner thread: choose a batch, pack it
                                                   device thread: run the pass a step at a
                                                    time (queries between the steps of bulk)
                                                   answer thread (device thread on a CPU):
                                                    write vectors into Segment
    listener thread <──Done/Failed── slot k pipe <─ (one small message per job)
    read vectors, unlink Segment

Only small pickled dataclasses (``wire/protocol``) cross the pipes; arrays live in
shared memory (``wire/segment``), created and unlinked by the web worker that owns
the request, read back through ``results.EmbeddingResult``. A score job
(``ScoreJob``: a query and its documents) takes the same path, but the engine keeps
its vectors (``engine/score_job``) and writes only a table of scores (``m3math``),
a row per document. A rerank job (``Kind.RERANK``: each input a (query, passage) pair) runs
on the cross-encoder where one is loaded (``model/reranker``), in passes of its own, and
writes one logit per pair. The master process (``pool``) creates
the pipes and shared counters, starts, supervises and stops the engines. The engines
count what they do in shared memory (``wire/shared.EngineStats``); the web side reads
them back per engine (``stats.EngineSnapshot``) and adds them up (``stats``).
``devices.is_cpu`` is the one reading of a DEVICE name as the CPU (``cpu``, ``cpu:1``).

The web side uses only the names in ``__all__`` (tests/unit/test_layout.py checks it).
"""

from gpu_pool.client import DEFAULT_OPTIONS, EngineClient, EngineTime, JobOptions, engine_time
from gpu_pool.devices import is_cpu
from gpu_pool.engine.spec import EngineSpec, engine_specs
from gpu_pool.errors import (
    ClientGone,
    EngineError,
    EngineFailed,
    EngineOverloaded,
    EngineTimeout,
    EngineUnavailable,
    ModelNotServed,
    SharedMemoryFull,
)
from gpu_pool.pool import EnginePool, NoFreeSlot
from gpu_pool.results import EmbeddingResult
from gpu_pool.stats import EngineSnapshot, batching_stats, lane_stats
from gpu_pool.wire.protocol import SCORE_MODES, Kind, Lane, has_kind
from gpu_pool.wire.segment import space as shared_memory_space
from gpu_pool.wire.segment_pool import bytes_needed as shared_memory_needed
from gpu_pool.wire.shared import EngineState, EngineStats

__all__ = [
    "DEFAULT_OPTIONS",
    "SCORE_MODES",
    "ClientGone",
    "EmbeddingResult",
    "EngineClient",
    "EngineError",
    "EngineFailed",
    "EngineOverloaded",
    "EnginePool",
    "EngineSnapshot",
    "EngineSpec",
    "EngineState",
    "EngineStats",
    "EngineTime",
    "EngineTimeout",
    "EngineUnavailable",
    "JobOptions",
    "Kind",
    "Lane",
    "ModelNotServed",
    "NoFreeSlot",
    "SharedMemoryFull",
    "batching_stats",
    "engine_specs",
    "engine_time",
    "has_kind",
    "is_cpu",
    "lane_stats",
    "shared_memory_needed",
    "shared_memory_space",
]
