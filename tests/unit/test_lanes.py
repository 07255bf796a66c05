"""The lanes as pure functions: which lane a request takes, which batch the device runs next,
when a query may run inside a bulk pass, and how bulk passes are sized by time."""

from __future__ import annotations

import pytest

from embsvc.api.body import priority
from embsvc.errors import InvalidRequest
from gpu_pool.engine.lanes import PassSizer, longest_step, may_interleave, next_lane
from gpu_pool.wire.protocol import Lane, choose_lane

I, B = Lane.INTERACTIVE, Lane.BULK  # noqa: E741 - two letters keep the tables below readable


@pytest.mark.parametrize("asked, tokens, expected", [
    (None, 12, I), (None, 128, I), (None, 129, B),  # the size decides: a query is short
    (B, 5, B), (I, 5000, I),  # what a request asks for wins
])
def test_a_request_takes_the_lane_it_asks_for_or_its_size_gives(asked, tokens, expected):
    assert choose_lane(asked, tokens, interactive_max_tokens=128) is expected


def test_interactive_max_tokens_zero_makes_every_unmarked_request_bulk():
    assert choose_lane(None, 1, interactive_max_tokens=0) is B


@pytest.mark.parametrize("body, header, expected", [
    ({}, None, None),
    ({"priority": "interactive"}, None, I),
    ({"priority": "bulk"}, "interactive", B),  # the body wins over the header
    ({}, " Bulk ", B),  # a header is read case-insensitively, as headers are
    ({"priority": None}, "interactive", I),  # a null field is no field (what some clients send)
])
def test_priority_comes_from_the_body_or_the_header(body, header, expected):
    assert priority(body, header) is expected


@pytest.mark.parametrize("body, header", [({"priority": "urgent"}, None), ({"priority": 1}, None),
                                          ({}, "high")])
def test_an_unknown_priority_is_a_clear_400(body, header):
    with pytest.raises(InvalidRequest) as refused:
        priority(body, header)
    assert refused.value.param == "priority" and '"interactive" or "bulk"' in refused.value.message


@pytest.mark.parametrize("interactive, bulk, last, expected", [
    (False, False, None, None),
    (True, False, None, I), (False, True, None, B),
    (True, True, None, I),  # a waiting query goes first ...
    (True, True, B, I),
    (True, True, I, B),  # ... but never twice in a row while bulk waits: bulk never starves
    (True, False, I, I),  # with no bulk waiting, queries follow each other
])
def test_the_idle_device_runs_a_query_first_but_never_twice_while_bulk_waits(interactive, bulk, last, expected):
    assert next_lane(interactive, bulk, last) is expected


def test_queries_inside_a_bulk_pass_keep_to_their_share():
    # Half the time each: queries may start while they have taken less than the bulk pass.
    assert may_interleave(bulk_s=1.0, interactive_s=0.0, bulk_share=0.5)
    assert may_interleave(bulk_s=1.0, interactive_s=0.99, bulk_share=0.5)
    assert not may_interleave(bulk_s=1.0, interactive_s=1.0, bulk_share=0.5)
    # Bulk keeping 80 %: queries get a quarter of its time.
    assert may_interleave(bulk_s=4.0, interactive_s=0.9, bulk_share=0.8)
    assert not may_interleave(bulk_s=4.0, interactive_s=1.1, bulk_share=0.8)


def test_a_bulk_share_of_one_never_interrupts_a_bulk_pass():
    assert not may_interleave(bulk_s=3.0, interactive_s=0.0, bulk_share=1.0)


def test_bulk_passes_are_sized_so_that_a_layer_stays_under_the_wait():
    sizer = PassSizer(max_wait_s=0.1, max_tokens=16384)
    assert sizer.budget() == 16384, "no rate known yet"
    sizer.observe(tokens=1000, steps=24, seconds=2.4)  # 100 µs per token and step
    assert sizer.budget() == 1000  # 1000 tokens: a step of 0.1 s
    assert sizer.tokens_per_second() == pytest.approx(1000 / 2.4)


def test_the_budget_bounds_the_longest_kind_of_step_not_the_average():
    sizer = PassSizer(max_wait_s=0.1, max_tokens=16384)
    # 1000 tokens, 3 steps of 0.3 s on average, the longest kind 0.5 s: a step of 0.1 s is 200 tokens.
    sizer.observe(tokens=1000, steps=3, seconds=0.9, longest_step_s=0.5)
    assert sizer.budget() == 200
    assert sizer.tokens_per_second() == pytest.approx(1000 / 0.9), "throughput: whole passes"


def test_a_pass_in_row_chunks_is_sized_by_its_longest_steps_rows():
    sizer = PassSizer(max_wait_s=0.1, max_tokens=16384)
    # 8000 tokens in chunks of 1000 rows: the longest step, 0.2 s, was over 1000 rows, not 8000.
    sizer.observe(tokens=8000, steps=400, seconds=40.0, longest_step_s=0.2, step_tokens=1000)
    assert sizer.budget() == 500


def test_unknown_step_times_count_as_the_average_step():
    sizer = PassSizer(max_wait_s=0.1, max_tokens=16384)
    sizer.observe(tokens=1000, steps=4, seconds=2.0, longest_step_s=0.0)
    assert sizer.budget() == 200  # the average step, 0.5 s for 1000 tokens


def test_the_longest_step_is_the_slowest_kinds_median():
    # Three kinds of step per layer (attention, then the feed-forward's halves), four layers.
    attention, up, down = 0.020, 0.008, 0.007
    steps = [attention, up, down] * 4
    assert longest_step(steps, 3) == pytest.approx(attention)
    steps[4] = 0.5  # one feed-forward step slowed by another process: not its kind's cost
    assert longest_step(steps, 3) == pytest.approx(attention)
    assert longest_step([], 3) == 0.0


def test_the_rate_is_a_moving_average_that_ignores_tiny_passes():
    sizer = PassSizer(max_wait_s=1.0, max_tokens=10**9)
    sizer.observe(tokens=1000, steps=10, seconds=1.0)
    sizer.observe(tokens=8, steps=10, seconds=5.0)  # mostly fixed costs: not a rate
    assert sizer.tokens_per_second() == pytest.approx(1000)
    sizer.observe(tokens=1000, steps=10, seconds=2.0)
    assert 500 < sizer.tokens_per_second() < 1000  # moves towards the new rate, not all the way


def test_the_budget_stays_within_its_bounds():
    fast = PassSizer(max_wait_s=1.0, max_tokens=4096)
    fast.observe(tokens=1000, steps=1, seconds=1e-6)
    assert fast.budget() == 4096
    slow = PassSizer(max_wait_s=0.001, max_tokens=4096)
    slow.observe(tokens=1000, steps=1, seconds=100.0)
    assert slow.budget() == 64  # never below a pass worth running
