"""The messages between web workers and engines: small frozen dataclasses.

Every message is pickled and written with one ``write`` to a pipe shared by
several writers. Writes of at most ``PIPE_BUF`` bytes are atomic on POSIX, so
no cross-process lock is needed and a writer killed mid-send cannot wedge the
pipe for the others; ``encode`` enforces the bound.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import operator
import pickle
import typing
from dataclasses import dataclass, field
from typing import TypeVar, cast

PIPE_BUF = 4096


class Kind(enum.IntFlag):
    """The outputs a job asks for."""

    DENSE = 1
    SPARSE = 2
    COLBERT = 4
    SCORE = 8  # a ScoreJob: the vectors stay in the engine, only the scores come back
    # Dense and ColBERT vectors in float16 (the client asked for float16 payloads): half the
    # bytes from the device and through shared memory, and no conversion in the web worker.
    HALF = 16
    # A rerank job: each input is one (query, passage) pair for the cross-encoder, which
    # answers one raw logit per pair. It runs on the second model, never in a pass of bge-m3.
    RERANK = 32


def has_kind(kinds: Kind, kind: Kind) -> bool:
    """Whether ``kinds`` holds ``kind``: ``kinds & kind`` as an int's test. IntFlag's ``&`` makes a
    new member through the enum machinery (0.5 µs), and a short request's pass asks a few dozen times."""
    return int.__and__(kinds, kind) != 0


# The columns of a score job's ``scores`` region, as named by FlagEmbedding's
# ``BGEM3FlagModel.compute_score``.
SCORE_MODES = ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense")
SCORE_KINDS = Kind.DENSE | Kind.SPARSE | Kind.COLBERT | Kind.SCORE


class Lane(enum.IntEnum):
    """Who waits for a job: a person (a query) or a program (an indexer).

    Interactive jobs go first, and may run between the steps of a bulk pass;
    bulk passes keep a share of the device (gpu_pool/engine/lanes.py).
    """

    INTERACTIVE = 0
    BULK = 1


def choose_lane(asked: Lane | None, n_tokens: int, interactive_max_tokens: int) -> Lane:
    """The lane a request asked for; otherwise its size decides: a query is short."""
    if asked is not None:
        return asked
    return Lane.INTERACTIVE if n_tokens <= interactive_max_tokens else Lane.BULK


M = TypeVar("M")


def _pickled_by_fields(cls: type[M]) -> type[M]:
    """Pickles a slotted dataclass's fields as one tuple of plain values, their names and enum
    types looked up once. By default an enum member pickles through ``Enum.__reduce_ex__`` and
    ``dataclass(slots=True)`` calls ``fields()`` on every message: a ``Job``'s round trip cost
    some 37 µs of CPU, one a request on each side of the pipe."""
    hints = typing.get_type_hints(cls)
    names = tuple(f.name for f in dataclasses.fields(cast(type, cls)))
    if not names:
        return cls
    enums = tuple((i, hints[name]) for i, name in enumerate(names)
                  if isinstance(hints[name], enum.EnumMeta))
    values = operator.attrgetter(*names)

    def getstate(self: M) -> list[object]:
        state = list(values(self)) if len(names) > 1 else [values(self)]
        for i, _ in enums:
            state[i] = cast(enum.Enum, state[i]).value
        return state

    def setstate(self: M, state: list[object]) -> None:
        for i, kind in enums:
            state[i] = kind(state[i])
        for name, value in zip(names, state, strict=True):
            object.__setattr__(self, name, value)

    setattr(cls, "__getstate__", getstate)  # noqa: B010 - set on the class dataclass made
    setattr(cls, "__setstate__", setstate)  # noqa: B010
    return cls

class ErrorCode(enum.Enum):
    """Why an engine could not finish a job; the web side maps each to a status."""

    FORWARD_FAILED = "forward_failed"
    OUT_OF_MEMORY = "out_of_memory"
    GONE = "gone"  # the engine is stopping: it holds the job but computes no more (503, retry)


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class Job:
    """Embed ``n_inputs`` token sequences stored in segment ``shm_name``."""

    job_id: int
    slot: int
    shm_name: str
    n_inputs: int
    n_tokens: int
    kinds: Kind
    lane: Lane = field(default=Lane.BULK, kw_only=True)
    # time.monotonic() after which nobody waits for the answer: CLOCK_MONOTONIC is one
    # clock for every process of the machine, so the engine can compare it with its own.
    deadline: float = field(default=math.inf, kw_only=True)


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class ScoreJob(Job):
    """Score documents against a query: input 0 is the query, inputs 1.. the documents.

    ``kinds`` is ``SCORE_KINDS``. A subclass of ``Job``, so the engine reads and
    batches it like any other; ``unused_ids`` are the special token ids that the
    sparse weights leave out (the web worker's tokenizer knows them).
    """

    weights: tuple[float, float, float]  # dense, sparse, colbert
    unused_ids: tuple[int, ...]


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class Done:
    """These jobs' vectors are in their segments (one message per slot and batch)."""

    job_ids: tuple[int, ...]


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class Failed:
    job_id: int
    code: ErrorCode
    message: str


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class Cancel:
    """Nobody waits for this job any more (its client left): drop it unless its pass has begun."""

    job_id: int


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class Stop:
    """Asks an engine to finish the batch in hand and exit."""


Message = Job | Cancel | Done | Failed | Stop


def encode(message: Message) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    # 4 bytes of length header precede the payload on the wire.
    if len(data) + 4 > PIPE_BUF:
        raise ValueError(f"message of {len(data)} bytes exceeds the atomic pipe write size")
    return data


def decode(data: bytes) -> Message:
    # pickle.loads is typed Any; only ``encode`` writes these pipes.
    return cast(Message, pickle.loads(data))
