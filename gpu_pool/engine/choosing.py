"""Choosing the inputs of the next forward pass (``packed`` then packs them): a pure function,
tested on its own.

Fairness comes first: only the inputs of the oldest ``max_jobs`` waiting jobs are
candidates, so a job is never overtaken indefinitely. Among those, the longest
inputs go first and the pass grows while its padded size (rows × longest row)
stays within ``max_tokens``; sorting by length keeps padding small. A single
input longer than the budget still runs, alone.

A pass runs one model: bge-m3, or the cross-encoder for rerank jobs. The batch takes the
items of the oldest queued item's model only; the others wait for the next pass (each turn
goes to the model of the oldest work, so neither model starves the other).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Item:
    """One input of a job, queued for the model."""

    job_seq: int  # arrival order of its job
    index: int  # position of the input in its job
    length: int  # tokens, special tokens included
    rerank: bool = False  # a (query, passage) pair for the cross-encoder, not a text for bge-m3


def choose_batch(queued: Sequence[Item], max_jobs: int, max_tokens: int) -> list[Item]:
    """The items of the next forward pass, longest first.

    ``queued`` is in arrival order, the items of a job contiguous.
    """
    candidates: list[Item] = []
    jobs: set[int] = set()
    model = queued[0].rerank if queued else False
    for item in queued:
        if item.rerank != model:
            continue
        if item.job_seq not in jobs:
            if len(jobs) == max_jobs:
                break
            jobs.add(item.job_seq)
        candidates.append(item)
    candidates.sort(key=lambda item: -item.length)
    batch: list[Item] = []
    tokens = 0
    for item in candidates:
        if batch and tokens + item.length > max_tokens:
            continue  # a shorter one may still fit
        batch.append(item)
        tokens += item.length
    return batch
