import numpy as np

from gpu_pool.engine.choosing import Item, choose_batch
from gpu_pool.engine.packed import pack
from gpu_pool.wire.protocol import Kind


def items(job_seq: int, *lengths: int) -> list[Item]:
    return [Item(job_seq, i, n) for i, n in enumerate(lengths)]


def test_lone_request_runs_whole():
    pending = items(1, 5, 7)
    assert choose_batch(pending, max_jobs=8, max_tokens=1000) == [Item(1, 1, 7), Item(1, 0, 5)]


def test_longest_first_and_token_budget_respected():
    pending = items(1, 10, 50, 20) + items(2, 45, 5)
    batch = choose_batch(pending, max_jobs=8, max_tokens=100)
    # 50 + 45 = 95; 20 and 10 would overflow 100, the 5 still fits.
    assert [i.length for i in batch] == [50, 45, 5]


def test_only_oldest_jobs_are_candidates():
    pending = items(1, 3) + items(2, 3) + items(3, 90)
    batch = choose_batch(pending, max_jobs=2, max_tokens=1000)
    assert {i.job_seq for i in batch} == {1, 2}


def test_input_longer_than_budget_runs_alone():
    pending = items(1, 500, 10)
    assert choose_batch(pending, max_jobs=8, max_tokens=100) == [Item(1, 0, 500)]


def test_every_item_is_eventually_planned_once():
    pending = items(1, *range(2, 40)) + items(2, 300, 2) + items(3, *([7] * 30))
    seen: list[Item] = []
    while pending:
        batch = choose_batch(pending, max_jobs=2, max_tokens=128)
        assert batch, "a non-empty queue always yields a batch"
        assert len(batch) == 1 or sum(i.length for i in batch) <= 128
        seen += batch
        pending = [i for i in pending if i not in batch]
    assert len(seen) == len(set(seen)) == 38 + 2 + 30


def test_a_batch_is_half_only_when_every_job_in_it_asks():
    items = [Item(job_seq=1, index=0, length=2), Item(job_seq=2, index=0, length=3)]
    ids = [np.array([0, 2]), np.array([0, 5, 2])]
    both = pack(items, ids, [Kind.DENSE | Kind.HALF, Kind.COLBERT | Kind.HALF])
    assert both.kinds == Kind.DENSE | Kind.COLBERT | Kind.HALF
    one = pack(items, ids, [Kind.DENSE | Kind.HALF, Kind.DENSE])
    assert one.kinds == Kind.DENSE  # float32 outputs: the float16 segment converts on writing
