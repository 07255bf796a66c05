"""On a GPU the engine answers a pass on a thread of its own while the next pass runs; on a CPU,
between passes (gpu_pool/engine/answers.py, device_thread.py).

The loop runs in this process over a fake model (on "cuda:0") whose outputs reach the host only
when the test lets them, with real pipes and real shared-memory segments."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import weakref
from itertools import count

import numpy as np
import pytest

from gpu_pool.devices import is_cpu
from gpu_pool.engine.answers import AnswerThread, DeviceFault, LaneAnswers, is_device_fault
from gpu_pool.engine.device_thread import Inline, for_device
from gpu_pool.engine.loop import Engine
from gpu_pool.engine.spec import EngineSpec
from gpu_pool.model.port import Outputs
from gpu_pool.wire import protocol
from gpu_pool.wire.protocol import Done, ErrorCode, Failed, Job, Kind, Lane, Stop
from gpu_pool.wire.segment import Layout, Segment
from gpu_pool.wire.shared import EngineShared

DIM = 4
_names = count()


@pytest.mark.parametrize("device, cpu", [("cpu", True), ("cpu:0", True), ("cpu:1", True), ("cuda:0", False),
                                         ("cuda", False), ("auto", False)])
def test_a_device_name_is_a_cpu_with_or_without_its_index(device, cpu):
    assert is_cpu(device) is cpu


def test_a_gpu_gets_answer_threads_a_cpu_answers_inline():
    gpu = for_device("cuda:0")
    assert isinstance(gpu, LaneAnswers)
    gpu.close()
    assert isinstance(for_device("cpu:0"), Inline)
    inline = for_device("cpu")
    assert isinstance(inline, Inline)
    ran: list[int] = []
    inline.submit(Lane.BULK, lambda: ran.append(1))
    assert ran == [1]  # at once, on this thread
    inline.submit(Lane.INTERACTIVE, lambda: 1 / 0)  # a failing task is logged, not raised into the device thread
    inline.close()


def test_a_query_is_answered_while_a_bulk_answer_is_still_being_written():
    answers = LaneAnswers()
    writing, order = threading.Event(), []
    answers.submit(Lane.BULK, lambda: (writing.wait(5), order.append("bulk")))
    answered = threading.Event()
    answers.submit(Lane.INTERACTIVE, lambda: (order.append("query"), answered.set()))
    assert answered.wait(5), "the query's answer waited for the bulk pass's"
    writing.set()
    answers.close()  # runs both lanes' tasks to their end
    assert order == ["query", "bulk"]


def test_tasks_run_in_order_and_a_failing_one_stops_none_after_it():
    answers = AnswerThread(depth=4)
    ran: list[int] = []

    def fail() -> None:
        raise RuntimeError("a bug in one answer")

    for task in (lambda: ran.append(1), fail, lambda: ran.append(2)):
        answers.submit(task)
    answers.close()  # runs what was queued first
    assert ran == [1, 2]


def test_submit_waits_while_depth_tasks_are_waiting_or_running():
    answers = AnswerThread(depth=1)
    gate = threading.Event()
    answers.submit(gate.wait)
    second = threading.Thread(target=answers.submit, args=(lambda: None,))
    second.start()
    second.join(0.2)
    assert second.is_alive(), "a second task is taken while the first runs"
    gate.set()
    second.join(5)
    assert not second.is_alive()
    answers.close()


class Arriving:
    """A pass's outputs that reach the host once ``gate`` is set (or fail to)."""

    def __init__(self, outputs: Outputs, gate: threading.Event, error: Exception | None) -> None:
        self.outputs, self.gate, self.error = outputs, gate, error

    def wait(self) -> Outputs:
        assert self.gate.wait(10), "the test never let these outputs arrive"
        if self.error is not None:
            raise self.error
        return self.outputs

    def seconds(self) -> float:
        return 0.001


def opened() -> threading.Event:
    """A gate already open: outputs on the host at once."""
    gate = threading.Event()
    gate.set()
    return gate


class OnePass:
    steps = steps_per_layer = 1

    def __init__(self, outputs: Arriving, tokens: int) -> None:
        self.arriving, self.step_tokens = outputs, tokens

    def step(self) -> bool:
        return True

    def finish(self) -> None:
        self.step()

    def sync(self) -> None:
        pass

    def outputs_async(self) -> Arriving:
        return self.arriving


class FakeModel:
    """Dense vectors filled with the pass's first id; each pass's outputs wait for its gate."""

    dim, device_name, dtype_name = DIM, "cuda:0", "float16"  # a GPU's: the engine answers on its own thread
    reranks = False

    def __init__(self) -> None:
        self.started: list[int] = []  # each pass's first id, in order
        self.gates: dict[int, threading.Event] = {}
        self.errors: dict[int, Exception] = {}
        self.start_errors: dict[int, Exception] = {}  # raised by the pass itself, on the device thread

    def start(self, ids, lengths, kinds, colbert_texts, step_tokens=None, one_thread=False) -> OnePass:
        first = int(ids[0])
        self.started.append(first)
        if first in self.start_errors:
            raise self.start_errors[first]
        dense = np.full((len(lengths), DIM), first, dtype=np.float32)
        gate = self.gates.setdefault(first, threading.Event())
        return OnePass(Arriving(Outputs(dense, None, None), gate, self.errors.get(first)), len(ids))

    def release_memory(self) -> None:
        pass


@pytest.fixture
def engine():
    """An engine over ``FakeModel`` serving on a thread; the test talks to it through ``Harness``."""
    harness = Harness()
    yield harness
    harness.stop()


class Harness:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.requests_in, self.requests_out = ctx.Pipe(duplex=False)
        self.answers_in, self.answers_out = ctx.Pipe(duplex=False)
        spec = EngineSpec(0, "cpu", "float32", "-", batch_size=1, max_batch_tokens=1024, batch_timeout_ms=0,
                          concurrency=2, interactive_max_wait_ms=20, bulk_share=0.8, threads=1,
                          log_level="INFO", log_format="text")
        self.model = FakeModel()
        self.engine = Engine(spec, self.model, self.requests_in, [self.answers_out], EngineShared(ctx, 1))
        self.segments: list[Segment] = []
        self.raised: BaseException | None = None  # what serve raised
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.engine.serve()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            self.raised = exc

    def send(self, first_id: int, lane: Lane = Lane.BULK) -> tuple[int, Segment]:
        """A job of one input whose first id is ``first_id``: its id and segment."""
        layout = Layout(1, 3, DIM, Kind.DENSE)
        segment = Segment.create(f"bgem3-test-answers-{os.getpid()}-{next(_names)}", layout)
        self.segments.append(segment)
        segment.arrays["lengths"][:] = [3]
        segment.arrays["ids"][:] = [first_id, 7, 2]
        job_id = first_id
        self.requests_out.send_bytes(protocol.encode(Job(job_id, 0, segment.name, 1, 3, Kind.DENSE, lane=lane)))
        return job_id, segment

    def let_through(self, first_id: int) -> None:
        """Let the outputs of the pass whose first id is ``first_id`` arrive (before or after it starts)."""
        self.model.gates.setdefault(first_id, threading.Event()).set()

    def answer(self) -> Done | Failed:
        assert self.answers_in.poll(10), "no answer came"
        return protocol.decode(self.answers_in.recv_bytes())

    def wait_started(self, n: int) -> None:
        deadline = time.monotonic() + 10
        while len(self.model.started) < n:
            assert time.monotonic() < deadline, f"passes started: {self.model.started}"
            time.sleep(0.005)

    def stop(self) -> None:
        for gate in self.model.gates.values():
            gate.set()
        self.requests_out.send_bytes(protocol.encode(Stop()))
        self.thread.join(10)
        for segment in self.segments:
            segment.close()


def test_the_next_pass_runs_while_the_last_ones_outputs_are_on_their_way(engine):
    first, first_segment = engine.send(11)
    engine.wait_started(1)
    second, second_segment = engine.send(12)
    engine.wait_started(2)  # the first pass's outputs have not arrived yet
    assert not engine.answers_in.poll(0.1), "an answer came before its outputs"
    engine.let_through(11)
    assert engine.answer() == Done((first,))
    engine.let_through(12)
    assert engine.answer() == Done((second,))
    np.testing.assert_array_equal(first_segment.arrays["dense"], np.full((1, DIM), 11))
    np.testing.assert_array_equal(second_segment.arrays["dense"], np.full((1, DIM), 12))


def test_outputs_that_fail_on_their_way_fail_their_jobs_and_the_engine_goes_on(engine):
    engine.model.errors[21] = RuntimeError("a shape the heads did not expect")
    engine.let_through(21)
    failed, _ = engine.send(21)
    answer = engine.answer()
    assert isinstance(answer, Failed) and answer.job_id == failed
    assert answer.code == ErrorCode.FORWARD_FAILED
    engine.let_through(22)
    served, segment = engine.send(22)
    assert engine.answer() == Done((served,))
    np.testing.assert_array_equal(segment.arrays["dense"], np.full((1, DIM), 22))


class AcceleratorError(RuntimeError):
    """Stands for torch.AcceleratorError (torch 2.8 and later), known by its name."""


@pytest.mark.parametrize("error, fault", [
    (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
    (RuntimeError("CUDA error: device-side assert triggered"), True),
    (AcceleratorError("unspecified launch failure"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
    (RuntimeError("a shape the heads did not expect"), False),
    (ValueError("CUDA error in a message that is no device's"), False),
])
def test_a_device_fault_is_told_from_running_out_of_memory_and_from_other_errors(error, fault):
    assert is_device_fault(error) is fault


def assert_ended_on_a_device_fault(engine: Harness) -> None:
    engine.thread.join(10)
    assert not engine.thread.is_alive(), "the engine went on after its device failed"
    assert isinstance(engine.raised, DeviceFault)


def test_a_device_fault_in_a_pass_fails_its_jobs_with_a_503_and_ends_the_engine(engine):
    engine.model.start_errors[31] = RuntimeError("CUDA error: device-side assert triggered")
    failed, _ = engine.send(31)
    answer = engine.answer()
    assert isinstance(answer, Failed) and answer.job_id == failed
    assert answer.code == ErrorCode.GONE and "device failed" in answer.message  # the web side's 503
    assert_ended_on_a_device_fault(engine)


def test_a_device_fault_on_the_outputs_way_ends_the_engine_after_the_answers_before_it(engine):
    engine.model.errors[41] = AcceleratorError("CUDA error: an illegal memory access was encountered")
    first, _ = engine.send(41)
    engine.wait_started(1)
    second, _ = engine.send(42)
    engine.wait_started(2)  # queued behind the failing pass, on a device that has failed
    engine.let_through(41)
    engine.let_through(42)
    failed = engine.answer()
    assert isinstance(failed, Failed) and failed.job_id == first and failed.code == ErrorCode.GONE
    assert engine.answer() == Done((second,))  # the pass already queued is answered first (its outputs came)
    assert_ended_on_a_device_fault(engine)


class SplitPass(OnePass):
    """A pass that runs out of memory on more than one input, holding a "tensor" until it is dropped."""

    def __init__(self, outputs: Arriving, tokens: int, inputs: int) -> None:
        super().__init__(outputs, tokens)
        self.inputs, self.tensor = inputs, np.zeros(1024)

    def step(self) -> bool:
        if self.inputs > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return True


class SplittingModel(FakeModel):
    def __init__(self) -> None:
        super().__init__()
        self.failed: weakref.ref[SplitPass] | None = None
        self.dropped_before_release: list[bool] = []

    def start(self, ids, lengths, kinds, colbert_texts, step_tokens=None, one_thread=False) -> SplitPass:
        dense = np.full((len(lengths), DIM), int(ids[0]), dtype=np.float32)
        running = SplitPass(Arriving(Outputs(dense, None, None), opened(), None), len(ids), len(lengths))
        if len(lengths) > 1:
            self.failed = weakref.ref(running)
        return running

    def release_memory(self) -> None:
        assert self.failed is not None
        self.dropped_before_release.append(self.failed() is None)  # no collection run: nothing else holds it


def test_the_out_of_memory_split_drops_the_failed_pass_before_it_gives_memory_back_and_retries():
    harness = Harness()
    harness.model = model = SplittingModel()
    harness.engine._device._model = model
    try:
        layout = Layout(2, 4, DIM, Kind.DENSE)
        segment = Segment.create(f"bgem3-test-answers-{os.getpid()}-{next(_names)}", layout)
        harness.segments.append(segment)
        segment.arrays["lengths"][:] = [2, 2]
        segment.arrays["ids"][:] = [61, 7, 62, 7]
        harness.requests_out.send_bytes(protocol.encode(Job(60, 0, segment.name, 2, 4, Kind.DENSE)))
        assert harness.answer() == Done((60,))
        assert model.dropped_before_release == [True]
        np.testing.assert_array_equal(segment.arrays["dense"], [[61] * DIM, [62] * DIM])  # each half's own pass
    finally:
        harness.stop()


class SteppedPass(OnePass):
    """A bulk pass of ``steps`` steps of 5 ms each."""

    steps = 40

    def __init__(self, outputs: Arriving, tokens: int) -> None:
        super().__init__(outputs, tokens)
        self.done = 0

    def step(self) -> bool:
        time.sleep(0.005)
        self.done += 1
        return self.done == self.steps

    def keep_ahead(self, steps: int) -> None:
        pass


class ThreadsModel(FakeModel):
    """Records whether each pass was told to run on one thread; the pass of id 31 has steps."""

    def __init__(self) -> None:
        super().__init__()
        self.one_thread: dict[int, bool] = {}  # by each pass's first id

    def start(self, ids, lengths, kinds, colbert_texts, step_tokens=None, one_thread=False) -> OnePass:
        first = int(ids[0])
        self.started.append(first)
        self.one_thread[first] = one_thread
        arriving = Arriving(Outputs(np.full((len(lengths), DIM), first, dtype=np.float32), None, None), opened(), None)
        return (SteppedPass if first == 31 else OnePass)(arriving, len(ids))


def test_a_query_run_while_bulk_work_is_under_way_is_told_to_run_on_one_thread():
    """On a CPU the bulk requests' web side keeps the cores busy while bulk work is under way,
    and a query pass on two threads would wait at each step for a partner preempted."""
    harness = Harness()
    harness.model = model = ThreadsModel()
    harness.engine._device._model = model
    try:
        bulk, _ = harness.send(31)
        harness.wait_started(1)
        query, _ = harness.send(32, Lane.INTERACTIVE)  # runs between the bulk pass's steps
        assert {harness.answer(), harness.answer()} == {Done((bulk,)), Done((query,))}
        alone, _ = harness.send(33, Lane.INTERACTIVE)
        assert harness.answer() == Done((alone,))
        assert model.started == [31, 32, 33]
        assert model.one_thread == {31: False, 32: True, 33: False}
    finally:
        harness.stop()


class Timed(Arriving):
    """Outputs there at once, of a pass that took ``took`` seconds on the device."""

    def __init__(self, took: float) -> None:
        super().__init__(Outputs(None, None, None), opened(), None)
        self.took = took

    def seconds(self) -> float:
        return self.took


class WarmingModel(FakeModel):
    """The first pass slow (cold), the later ones fast; records what each pass computed."""

    def __init__(self) -> None:
        super().__init__()
        self.passes: list[tuple[Kind, int]] = []  # kinds, ColBERT texts

    def start(self, ids, lengths, kinds, colbert_texts, step_tokens=None, one_thread=False) -> OnePass:
        self.passes.append((kinds, len(colbert_texts)))
        return OnePass(Timed(1.0 if len(self.passes) == 1 else 0.001), len(ids))


def test_the_warm_up_runs_every_kind_and_learns_the_rate_from_its_second_pass_only():
    harness = Harness()
    harness.model = model = WarmingModel()
    harness.engine._device._model = model
    try:
        harness.engine.warm_up()
        every_kind = Kind.DENSE | Kind.SPARSE | Kind.COLBERT
        assert model.passes == [(every_kind, 1), (every_kind, 1)]
        sizer = harness.engine._device._sizer
        assert sizer.seconds_per_token == pytest.approx(0.001 / 256)  # the cold pass's 1 s left out
    finally:
        harness.stop()


def test_with_a_cross_encoder_the_warm_up_runs_it_once_after_and_learns_nothing_from_it():
    harness = Harness()
    harness.model = model = WarmingModel()
    model.reranks = True
    harness.engine._device._model = model
    try:
        harness.engine.warm_up()
        every_kind = Kind.DENSE | Kind.SPARSE | Kind.COLBERT
        assert model.passes == [(every_kind, 1), (every_kind, 1), (Kind.RERANK, 0)]
        sizer = harness.engine._device._sizer
        assert sizer.seconds_per_token == pytest.approx(0.001 / 256)
    finally:
        harness.stop()
