"""The chaos soak's memory verdict (bench/chaos.py): growth is a leak only past both bounds."""

from __future__ import annotations

import random

from bench import chaos
from testkit import traffic


def test_growth_counts_past_ten_percent_and_two_mib():
    assert not chaos.grew(6.1, 7.0)  # an nginx worker taking its buffers: 15 %, under 1 MiB
    assert not chaos.grew(400.0, 420.0)  # an engine: 20 MiB, 5 %
    assert chaos.grew(400.0, 450.0)  # 12.5 %, 50 MiB
    assert chaos.grew(10.0, 13.0)


def test_the_largest_of_a_replaced_role_is_compared_too():
    rows, grown = chaos.memory({1: "engine", 2: "nginx worker"}, {1: 400.0, 2: 6.1},
                               {3: "engine", 2: "nginx worker"}, {3: 460.0, 2: 7.0})
    assert grown == ["largest engine"]
    assert [row["growth"] for row in rows] == [None, 0.148, None]


def test_a_soak_without_faults_explains_only_the_deliberate_errors():
    assert chaos.SOAK.explained == {"overloaded_error", "invalid_request_error"} and not chaos.SOAK.faults
    assert chaos.SOAK.shm_size is None and "long_all_kinds" not in chaos.SOAK.mix
    assert chaos.CHAOS.explained >= chaos.SOAK.explained and "long_all_kinds" in chaos.CHAOS.mix


def test_a_restart_fails_a_soak_but_not_a_chaos_run():
    found = chaos.Run(chaos.Tally(), chaos.Faults(), restarts=1, retried={}, memory=[], grown=[], new_processes=[7])
    assert "restarted" in chaos.report(found, (1, 10.0, 1.0), chaos.SOAK)["verdict"]
    assert chaos.report(found, (1, 10.0, 1.0), chaos.CHAOS)["verdict"] == "PASS"


def test_an_unexpected_answer_fails_a_soak():
    tally = chaos.Tally(measuring=True)
    bad = traffic.next_call(random.Random(0), {"bad": 1})
    tally.record(bad, 200, "", 0.01)  # a bad request answered 200
    found = chaos.Run(tally, chaos.Faults(), restarts=0, retried={}, memory=[], grown=[], new_processes=[])
    assert "other than the expected" in chaos.report(found, (1, 10.0, 1.0), chaos.SOAK)["verdict"]
