"""The web worker's side: submit a job to the least-loaded engine and wait for it.

Waiting requests are kept in a dict keyed by job id (as ``concurrent.futures``
does); one listener thread reads this worker's answer pipe and wakes them. It
also fails every request whose engine died (its ``generation`` moved on), so no
request waits for an answer that cannot come.

A slot's pipe outlives its worker: the master hands the slot to the next worker,
and the engine may still answer a job of the dead one. Job ids therefore start
from the worker's pid, so such a late answer matches no waiter and is dropped.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from gpu_pool.errors import (
    ClientGone,
    EngineFailed,
    EngineOverloaded,
    EngineTimeout,
    EngineUnavailable,
    ModelNotServed,
    SharedMemoryFull,
)
from gpu_pool.pool import EngineHandle, EnginePool
from gpu_pool.results import EmbeddingResult
from gpu_pool.stats import EngineSnapshot
from gpu_pool.wire import protocol
from gpu_pool.wire.frames import FrameReader
from gpu_pool.wire.protocol import SCORE_KINDS, Cancel, Done, ErrorCode, Failed, Job, Kind, Lane, ScoreJob, choose_lane
from gpu_pool.wire.segment import Layout, NoSpace, Segment, held, space
from gpu_pool.wire.segment_pool import WorkerSegments
from gpu_pool.wire.shared import EngineState

_LISTEN_POLL_S = 0.2
_GONE_POLL_S = 0.1  # how often a waiting request looks whether its client is still there
_INTERACTIVE_ROOM = 0.2  # of MAX_QUEUE_SIZE, kept for interactive requests beyond it


@dataclass
class EngineTime:
    """What a web request spent waiting for engines, summed over its jobs: from handing a job
    over to its answer (``total_s``), and of that, in the engine, from the job's arrival to its
    first pass (``queue_s``) and from there to its answer (``passes_s``); the rest is the pipes'
    and the threads' wake-ups on both sides."""

    total_s: float = 0.0
    queue_s: float = 0.0
    passes_s: float = 0.0


# The current web request's ``EngineTime``, which the web layer sets per request for its
# Server-Timing header (None: nobody counts).
engine_time: ContextVar[EngineTime | None] = ContextVar("engine_time", default=None)


@dataclass(frozen=True)
class JobOptions:
    """How a request wants its job run: its lane (None: its size decides), and a check
    whether its client is gone (None: not known)."""

    priority: Lane | None = None
    gone: Callable[[], bool] | None = None


DEFAULT_OPTIONS = JobOptions()
_clients = itertools.count(1)  # made in this process


class _Signal:
    """A one-shot wake-up for one waiting thread: a held lock that ``set`` releases.

    Cheaper than ``threading.Event`` (a condition, a lock per wait and a notify_all),
    which showed in the web workers' profile at one per request. Only the listener
    thread calls ``set``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.fired = False

    def wait(self, timeout_s: float) -> bool:
        return self._lock.acquire(timeout=timeout_s)

    def set(self) -> None:
        if not self.fired:
            self.fired = True
            self._lock.release()


@dataclass
class _Waiter:
    engine: EngineHandle
    generation: int
    event: _Signal = field(default_factory=_Signal)
    answer: Done | Failed | None = None
    lost: bool = False


class EngineClient:
    def __init__(self, pool: EnginePool, slot: int, max_queue_size: int, timeout_s: float,
                 interactive_max_tokens: int = 0) -> None:
        """``interactive_max_tokens``: a request of at most this many tokens that names no lane is interactive."""
        self.pool, self.slot = pool, slot
        self.max_queue_size, self.timeout_s = max_queue_size, timeout_s
        self.interactive_max_tokens = interactive_max_tokens
        self._answers = pool.slot_readers[slot]
        self._waiters: dict[int, _Waiter] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._seq = itertools.count(1)
        self._id_base = self._pid << 32
        # A web worker has one client; a process with more (tests) numbers the later ones, so that
        # their segments' names never meet.
        n = next(_clients)
        self._segments = WorkerSegments(f"{pool.shm_prefix}{self._pid}-" if n == 1 else
                                        f"{pool.shm_prefix}{self._pid}.{n}-")
        threading.Thread(target=self._listen, name="engine-answers", daemon=True).start()

    # -- state for /health and /stats -----------------------------------------------

    def states(self) -> list[EngineState]:
        return [EngineState(h.shared.state.value) for h in self.pool.engines]

    def snapshot(self) -> list[EngineSnapshot]:
        """Per engine: state, queue, restarts and the engine's own figures."""
        return [
            EngineSnapshot(h.spec.index, h.spec.device, EngineState(h.shared.state.value),
                           h.shared.requests_in_flight(), h.shared.restarts.value, h.shared.read_stats())
            for h in self.pool.engines
        ]

    def shared_memory(self) -> dict[str, object]:
        """/dev/shm's size and use, and what this server's segments hold of it."""
        now = space()
        return {"path": now.path, "size_bytes": now.size, "used_bytes": now.used, "free_bytes": now.free,
                "server_bytes": held(self.pool.shm_prefix)}

    def info(self) -> dict[str, object]:
        for handle in self.pool.engines:
            if handle.shared.state.value == EngineState.READY:
                return handle.shared.info()
        return {}

    # -- submitting -----------------------------------------------------------------

    def embed(self, ids: list[np.ndarray], kinds: Kind, unused_ids: np.ndarray,
              options: JobOptions = DEFAULT_OPTIONS) -> EmbeddingResult:
        """Run the inputs through an engine; close the result once it is read.

        ``unused_ids``: the special tokens that the sparse weights leave out.
        """
        return EmbeddingResult(self._run(ids, kinds, options), ids, unused_ids)

    def score(self, ids: list[np.ndarray], weights: tuple[float, float, float],
              unused_ids: np.ndarray, options: JobOptions = DEFAULT_OPTIONS) -> np.ndarray:
        """Scores of inputs 1.. against input 0 (the query): [documents, len(SCORE_MODES)]."""
        unused = tuple(unused_ids.tolist())
        with self._run(ids, SCORE_KINDS, options, ScoreJob, weights=weights, unused_ids=unused) as seg:
            return seg.arrays["scores"].copy()

    def rerank(self, ids: list[np.ndarray], options: JobOptions = DEFAULT_OPTIONS) -> np.ndarray:
        """The cross-encoder's raw logits (float32, one per pair) of (query, passage) pairs, each
        pair's ids built as FlagReranker builds them (embsvc/core/rerank_pairs.py), special tokens
        included. ``ModelNotServed`` at once when the ready engines hold no cross-encoder."""
        reranker = self.info().get("reranker", {})  # {}: no engine ready, and _run says so
        if reranker is None:
            raise ModelNotServed("no cross-encoder is served (RERANKER_PATH is not set); only bge-m3 is")
        limit = cast("dict[str, int]", reranker).get("max_positions")
        if limit is not None and any(len(x) > limit for x in ids):
            # Positions past the model's would index outside its table: on CUDA a device-side assert.
            raise ValueError(f"a pair has more than the cross-encoder's {limit} positions; cut it first")
        with self._run(ids, Kind.RERANK, options) as seg:
            return seg.arrays["logits"].copy()

    def _run(self, ids: list[np.ndarray], kinds: Kind, options: JobOptions, job_type: type[Job] = Job,
             **fields: object) -> Segment:
        """Write the ids into a segment, hand the job to an engine and wait; returns the filled segment.

        ``fields``: the job type's own fields beyond ``Job``'s.
        """
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
        lane = choose_lane(options.priority, int(lengths.sum()), self.interactive_max_tokens)
        engine, generation = self._reserve(lane)
        try:
            layout = Layout(len(ids), int(lengths.sum()), engine.shared.dim.value, kinds)
            try:
                seg = self._segments.take(layout)
            except NoSpace as exc:
                raise SharedMemoryFull(str(exc), retry_after_s=1.0, never_fits=exc.never_fits()) from None
            try:
                seg.arrays["lengths"][:] = lengths
                np.concatenate(ids, out=seg.arrays["ids"], casting="unsafe")
                job = job_type(self._id_base + next(self._seq), self.slot, seg.name, layout.n_inputs,
                               layout.n_tokens, kinds, lane=lane, deadline=time.monotonic() + self.timeout_s,
                               **fields)
                self._submit(engine, generation, job, options.gone)
                if (spent := engine_time.get()) is not None:
                    queue_s, passes_s = seg.arrays["times"].tolist()
                    spent.queue_s += queue_s
                    spent.passes_s += passes_s
                return seg
            except BaseException:
                seg.discard()  # never reused: the engine may still write into it
                raise
        finally:
            with self._lock:
                engine.shared.in_flight[self.slot] -= 1

    def _reserve(self, lane: Lane) -> tuple[EngineHandle, int]:
        """A place in the least-loaded ready engine's queue, and that engine's generation.

        The generation is read before the state: if the engine dies after this,
        the supervisor has moved the generation on by the time it is replaced,
        so the listener fails the request instead of letting it wait. A queue full
        of bulk work still takes interactive requests, up to ``_INTERACTIVE_ROOM`` more.
        """
        generations = [h.shared.generation.value for h in self.pool.engines]
        ready = [(h, g) for h, g in zip(self.pool.engines, generations, strict=True)
                 if h.shared.state.value == EngineState.READY]
        if not ready:
            loading = any(h.shared.state.value == EngineState.LOADING for h in self.pool.engines)
            raise EngineUnavailable("the model is loading" if loading else "the engine is restarting")
        engine, generation = min(ready, key=lambda pair: pair[0].shared.requests_in_flight())
        with self._lock:
            # Take the place first, then count: two workers racing for the last
            # place may both be refused, but the queue never exceeds its bound.
            engine.shared.in_flight[self.slot] += 1
            room = self.max_queue_size
            if lane == Lane.INTERACTIVE:
                room += max(1, math.ceil(self.max_queue_size * _INTERACTIVE_ROOM))
            if engine.shared.requests_in_flight() > room:
                engine.shared.in_flight[self.slot] -= 1
                raise EngineOverloaded("too many requests are waiting for the model", retry_after_s=1.0)
        return engine, generation

    def _submit(self, engine: EngineHandle, generation: int, job: Job,
                gone: Callable[[], bool] | None) -> None:
        waiter = _Waiter(engine, generation)
        with self._lock:
            self._waiters[job.job_id] = waiter
        began = time.perf_counter()
        try:
            # One write of a few hundred bytes: atomic with other workers' writes.
            engine.requests_out.send_bytes(protocol.encode(job))
            self._wait(waiter, job, gone)
        finally:
            with self._lock:
                self._waiters.pop(job.job_id, None)
            if (spent := engine_time.get()) is not None:
                spent.total_s += time.perf_counter() - began
        self._raise_for(waiter)

    def _wait(self, waiter: _Waiter, job: Job, gone: Callable[[], bool] | None) -> None:
        """Until the answer comes, the request times out, or its client leaves: then the engine is
        told, so that it computes nothing for nobody (it drops a timed-out job by its deadline)."""
        if gone is None:
            if not waiter.event.wait(self.timeout_s):
                raise EngineTimeout(f"no answer within {self.timeout_s:g} s")
            return
        while not waiter.event.wait(min(_GONE_POLL_S, max(0.0, job.deadline - time.monotonic()))):
            if time.monotonic() >= job.deadline:
                raise EngineTimeout(f"no answer within {self.timeout_s:g} s")
            if gone():
                self._cancel(waiter.engine, job.job_id)
                raise ClientGone("the client closed the connection before the answer")

    @staticmethod
    def _cancel(engine: EngineHandle, job_id: int) -> None:
        with contextlib.suppress(OSError):  # a dead engine computes nothing anyway
            engine.requests_out.send_bytes(protocol.encode(Cancel(job_id)))

    @staticmethod
    def _raise_for(waiter: _Waiter) -> None:
        if waiter.lost:
            raise EngineUnavailable("the engine stopped while computing this request; retry")
        answer = waiter.answer
        if isinstance(answer, Failed):
            if answer.code == ErrorCode.GONE:
                raise EngineUnavailable(answer.message)
            raise EngineFailed(answer.message, out_of_memory=answer.code == ErrorCode.OUT_OF_MEMORY)

    # -- the listener thread --------------------------------------------------------

    def _listen(self) -> None:
        frames = FrameReader(self._answers)
        checked = time.monotonic()
        while True:
            try:
                for frame in frames.read(_LISTEN_POLL_S):
                    # Engines write only Done and Failed to a slot's pipe.
                    self._deliver(cast("Done | Failed", protocol.decode(frame)))
            except (EOFError, OSError):
                return
            if time.monotonic() - checked >= _LISTEN_POLL_S:
                checked = time.monotonic()
                self._fail_lost()

    def _deliver(self, answer: Done | Failed) -> None:
        job_ids = answer.job_ids if isinstance(answer, Done) else (answer.job_id,)
        with self._lock:
            waiters = [self._waiters.get(job_id) for job_id in job_ids]
        for waiter in waiters:
            if waiter is not None:  # None: the request timed out, its answer is late
                waiter.answer = answer
                waiter.event.set()

    def _fail_lost(self) -> None:
        with self._lock:
            waiters = list(self._waiters.values())
        for waiter in waiters:
            if waiter.engine.shared.generation.value != waiter.generation and not waiter.event.fired:
                waiter.lost = True
                waiter.event.set()
