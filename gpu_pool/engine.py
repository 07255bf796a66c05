"""The engine process: loads the model on its device and serves jobs in batches.

A reader thread takes jobs off the request pipe, attaches their shared memory
and queues their inputs, so that the next batch is gathered while the current
one runs (torch releases the GIL during the forward pass). The main thread
picks a batch (``batching.plan_batch``), runs the model once for it, computing
only the heads some job in it asked for, writes each input's vectors into its
job's segment and answers every job whose inputs are all done.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from gpu_pool import logs, protocol
from gpu_pool.batching import Item, plan_batch
from gpu_pool.jobs import ActiveJob
from gpu_pool.protocol import Done, ErrorCode, Failed, Job, Kind, Stop
from gpu_pool.shared import EngineShared, EngineState

log = logging.getLogger("gpu_pool.engine")

_POLL_S = 0.25


@dataclass(frozen=True)
class EngineSpec:
    index: int
    device: str
    dtype: str
    model_path: str
    batch_size: int  # most jobs merged into one forward pass
    max_batch_tokens: int  # padded tokens in one forward pass
    threads: int  # torch CPU threads; 0 = the cores this process may use
    log_level: str
    log_format: str


def main(spec: EngineSpec, requests: Connection, slots: list[Connection], shared: EngineShared) -> None:
    """Process entry point."""
    logs.configure(spec.log_level, spec.log_format)
    import torch

    from gpu_pool.device import resolve_device, resolve_dtype
    from gpu_pool.m3 import M3Model

    shared.state.value = EngineState.LOADING
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    threads = spec.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    log.info("Using device %s with dtype %s (%d CPU threads)", device, str(dtype).removeprefix("torch."), threads)
    started = time.monotonic()
    model = M3Model(Path(spec.model_path), device, dtype)
    log.info("Model loaded from %s in %.1f s", spec.model_path, time.monotonic() - started)
    shared.set_info({"device": str(device), "dtype": str(dtype).removeprefix("torch."), "dim": model.dim})
    for conn in slots:
        # A slot whose worker is gone must not block the engine: its answers are dropped.
        os.set_blocking(conn.fileno(), False)
    engine = Engine(spec, model, requests, slots, shared)
    shared.state.value = EngineState.READY
    engine.serve()
    log.info("Engine %d stopped", spec.index)


class Engine:
    def __init__(self, spec: EngineSpec, model, requests: Connection, slots: list[Connection],
                 shared: EngineShared) -> None:
        self.spec, self.model, self.requests, self.slots, self.shared = spec, model, requests, slots, shared
        self.jobs: dict[int, ActiveJob] = {}
        self.pending: list[Item] = []
        self.ready = threading.Condition()
        self.stopping = False
        self._seq = 0
        self._parent = os.getppid()

    # -- the reader thread ---------------------------------------------------------

    def read_requests(self) -> None:
        while not self.stopping:
            if os.getppid() != self._parent:
                log.error("The server's master process is gone; the engine stops")
                self._stop()
                return
            try:
                if not self.requests.poll(_POLL_S):
                    continue
                message = protocol.decode(self.requests.recv_bytes())
            except (EOFError, OSError):
                self._stop()
                return
            if isinstance(message, Stop):
                self._stop()
            elif isinstance(message, Job):
                self._accept(message)

    def _accept(self, job: Job) -> None:
        self._seq += 1
        try:
            active = ActiveJob.attach(job, self._seq, self.model.dim)
        except FileNotFoundError:
            return  # the web worker gave up on it already
        with self.ready:
            self.jobs[active.seq] = active
            self.pending.extend(active.items())
            self.ready.notify()

    def _stop(self) -> None:
        with self.ready:
            self.stopping = True
            self.ready.notify()

    # -- the main loop ---------------------------------------------------------------

    def serve(self) -> None:
        reader = threading.Thread(target=self.read_requests, name="engine-reader", daemon=True)
        reader.start()
        while True:
            with self.ready:
                while not self.pending and not self.stopping:
                    self.ready.wait(_POLL_S)
                if not self.pending:
                    break  # stopping, and nothing left in hand
                batch = plan_batch(self.pending, self.spec.batch_size, self.spec.max_batch_tokens)
                taken = {(item.job_seq, item.index) for item in batch}
                self.pending = [item for item in self.pending if (item.job_seq, item.index) not in taken]
            self._run(batch)
        for active in list(self.jobs.values()):
            self._fail([active], ErrorCode.GONE, "the engine is shutting down")

    def _run(self, batch: list[Item]) -> None:
        started = time.perf_counter()
        actives = [self.jobs[item.job_seq] for item in batch]
        width = batch[0].length
        ids = np.full((len(batch), width), self.model.pad_id, dtype=np.int64)
        lengths = np.array([item.length for item in batch], dtype=np.int64)
        for row, (item, active) in enumerate(zip(batch, actives, strict=True)):
            ids[row, : item.length] = active.ids(item.index)
        kinds = Kind(0)
        for active in actives:
            kinds |= active.job.kinds
        colbert_rows = np.array([r for r, a in enumerate(actives) if a.wants(Kind.COLBERT)], dtype=np.int64)
        try:
            out = self.model.forward(ids, lengths, kinds, colbert_rows)
        except Exception as exc:  # noqa: BLE001 - a failed pass fails its jobs, the engine goes on
            self._fail_batch(actives, exc)
            return
        colbert_of_row = {int(r): i for i, r in enumerate(colbert_rows)}
        for row, (item, active) in enumerate(zip(batch, actives, strict=True)):
            n = item.length
            active.write(
                item.index,
                out.dense[row] if out.dense is not None and active.wants(Kind.DENSE) else None,
                out.sparse[row, :n] if out.sparse is not None and active.wants(Kind.SPARSE) else None,
                out.colbert[colbert_of_row[row], : n - 1] if row in colbert_of_row else None,
            )
        finished = {a.seq: a for a in actives if a.remaining == 0}
        for active in finished.values():
            self._answer(active, Done(active.job.job_id))
        self.shared.add_stats(
            processed_requests=len(finished),
            batches=1,
            batched_requests=len({a.seq for a in actives}),
            batched_inputs=len(batch),
            tokens=int(lengths.sum()),
            padded_tokens=ids.size,
            processing_seconds=time.perf_counter() - started,
        )

    def _fail_batch(self, actives: list[ActiveJob], exc: Exception) -> None:
        out_of_memory = "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"
        code = ErrorCode.OUT_OF_MEMORY if out_of_memory else ErrorCode.FORWARD_FAILED
        log.error("Forward pass failed for %d inputs: %s", len(actives), exc, exc_info=not out_of_memory)
        unique = list({a.seq: a for a in actives}.values())
        with self.ready:
            seqs = {a.seq for a in unique}
            self.pending = [item for item in self.pending if item.job_seq not in seqs]
        self._fail(unique, code, "the model failed on this batch" if not out_of_memory else "out of memory")

    def _fail(self, actives: list[ActiveJob], code: ErrorCode, message: str) -> None:
        for active in actives:
            self._answer(active, Failed(active.job.job_id, code, message))
        self.shared.add_stats(failed_requests=len(actives))

    def _answer(self, active: ActiveJob, message: Done | Failed) -> None:
        self.jobs.pop(active.seq, None)
        active.segment.close()
        try:
            self.slots[active.job.slot].send_bytes(protocol.encode(message))
        except (BlockingIOError, BrokenPipeError):
            log.warning("Dropped the answer to job %d: its web worker is not reading", active.job.job_id)


if __name__ == "__main__":  # pragma: no cover - started through multiprocessing only
    sys.exit("run the server with gunicorn -c gunicorn.conf.py embsvc.wsgi:app")
