"""What becomes of a pass once the device has run it: its answers, beside the next pass on a GPU.

On a GPU the main thread queues a pass's kernels, hands the pass to the answer thread and
queues the next one, so that waiting for the outputs' copy to the host, writing the vectors
into the jobs' shared memory and sending the answers overlap the next pass's kernels. Tasks
run one at a time in the order given, so a job's failure never overtakes the writes of its
earlier passes. ``submit`` waits while ``depth`` tasks are waiting or running: the main
thread stays at most that many passes ahead of the answers (the queued work that a query
arriving would wait behind).

On a CPU the passes use every core, so an answer beside the next pass only takes cores from
it: the mixed load of bench/priority.py gave 0.94 of its tokens/s with the answer thread (six
alternating turns, bench/ab.py). There the main thread answers each pass itself (``Inline``).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("gpu_pool.engine")

Task = Callable[[], None]


def for_device(device_name: str) -> AnswerThread | Inline:
    return Inline() if device_name.startswith("cpu") else AnswerThread()


class Inline:
    """Each task runs at once, on the thread that submits it."""

    def submit(self, task: Task) -> None:
        _run_guarded(task)

    def close(self) -> None:
        pass


class AnswerThread:
    def __init__(self, depth: int = 1) -> None:
        self._room = threading.Semaphore(depth)
        self._tasks: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="engine-answers", daemon=True)
        self._thread.start()

    def submit(self, task: Task) -> None:
        """Queue ``task``, once fewer than ``depth`` are in hand."""
        self._room.acquire()
        self._tasks.put(task)

    def close(self) -> None:
        """Run the tasks queued so far, then stop."""
        self._tasks.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                _run_guarded(task)
            finally:
                self._room.release()


def _run_guarded(task: Task) -> None:
    try:
        task()
    except Exception:  # a task fails its own jobs; this keeps every later answer coming
        log.exception("An answer task failed")
