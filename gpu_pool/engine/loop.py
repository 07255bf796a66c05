"""The engine's loop: jobs in from the request pipe, batches through the model, answers out.

Three threads, four on a GPU, so that the device never waits on Python; each is a class of
its own, and they share a ``JobTable`` and a ``Handoff`` under one lock:

- the reader (``reader.Reader``) takes jobs off the request pipe, attaches their shared
  memory and queues their inputs in the job table;
- the planner (``planner.Planner``) chooses the next batch of each lane
  (``choosing.choose_batch``) and packs its ids into one row (``packed.pack``) while the
  current batch runs. An interactive batch is made at once, on the reader's thread or the
  device thread's (one waits at a time; the queries that arrive while it waits join it as
  long as all of them fit, the rest gather into the next). On the planner's own thread, a
  bulk batch is made at once for an idle device; while the
  device is busy it keeps filling until it is full (``batch_size`` jobs or its token budget,
  sized by time: ``lanes.PassSizer``) or its oldest job has waited ``batch_timeout_ms``. At
  most ``concurrency`` bulk batches are in progress: one running, the rest prepared. Jobs
  whose deadline has passed, or whose client left (``Cancel``), are dropped before their
  first pass;
- the device thread (``device_thread.DeviceThread``, the process's main thread) runs the
  model a step (a part of a layer) at a time, computing only the heads some job in the batch
  asked for, and hands the pass to the answerer. Between the steps of a bulk pass it runs a
  waiting interactive batch whole (``lanes.may_interleave``). A pass that runs out of memory
  is split in two and retried, down to the one input that does not fit. A device fault (an
  illegal address, a device-side assert: ``answers.is_device_fault``) fails every job held
  with a 503 and ends the engine (``DeviceFault``), for the pool to start another;
- the answerer (``answers.Answerer``) waits for a pass's outputs to reach the host, writes
  each input's vectors into its job's segment and answers every job whose inputs are all
  done. On a GPU it runs on the answer thread (``answers.AnswerThread``), while the device
  thread runs the next pass; on a CPU the device thread runs it between passes
  (``device_thread.Inline``: the passes use every core there). It alone answers or fails a
  job once its first pass began.
"""

from __future__ import annotations

import threading
from multiprocessing.connection import Connection

from gpu_pool.engine.answers import Answerer
from gpu_pool.engine.device_thread import DeviceThread
from gpu_pool.engine.jobs import JobTable
from gpu_pool.engine.lanes import PassSizer
from gpu_pool.engine.planner import Handoff, Planner
from gpu_pool.engine.reader import Reader
from gpu_pool.engine.spec import EngineSpec
from gpu_pool.model.port import Model
from gpu_pool.wire.shared import EngineShared


class Engine:
    """The threads of one engine, built over one job table and one handoff."""

    def __init__(self, spec: EngineSpec, model: Model, requests: Connection, slots: list[Connection],
                 shared: EngineShared) -> None:
        table, handoff = JobTable(shared), Handoff()
        sizer = PassSizer(spec.interactive_max_wait_ms / 1000, spec.max_batch_tokens)
        self._answerer = Answerer(model.device_name, table, handoff.ready, slots, shared, sizer)
        self._planner = Planner(spec, table, handoff, sizer)
        self._reader = Reader(requests, model.dim, table, handoff, self._planner, shared)
        self._device = DeviceThread(spec, model, table, handoff, self._planner, sizer, self._answerer, shared)

    def warm_up(self) -> None:
        self._device.warm_up()

    def serve(self) -> None:
        """Until stopped (``Stop``, the request pipe closed or the master gone) and every job is answered."""
        threading.Thread(target=self._reader.run, name="engine-reader", daemon=True).start()
        threading.Thread(target=self._planner.run, name="engine-planner", daemon=True).start()
        self._device.run()  # raises DeviceFault once the device has failed, every job failed
        self._answerer.fail_all("the engine is shutting down")
