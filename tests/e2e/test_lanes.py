"""Queries never wait behind bulk indexing (real gunicorn, a real engine, the tiny model).

Long inputs make the tiny model's passes long enough to watch: a bulk pass of three
8,190-token texts takes about a second a layer here, and the model has two layers.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from testkit import procs
from testkit.server import Server
from tests.e2e.conftest import dense, dense_vectors, post, serving

LONG = 8190  # tokens of each bulk text, cut by max_length
QUERIES = ["where is the river", "who wrote this", "what time is it"]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """Its own server: three long texts fit one bulk pass."""
    with serving(tiny_model, tmp_path_factory.mktemp("lanes"), MAX_BATCH_TOKENS="32768") as server:
        yield server


@pytest.fixture(scope="module")
def reference(server) -> dict[str, list[float]]:
    return dense_vectors(server, QUERIES)


def bulk_text(i: int) -> dict:
    return {"input": f"document {i} " + "word " * 9000, "max_length": LONG, "return_colbert": False,
            "return_sparse": False}


def engine_stats(server: Server, auth: dict[str, str]) -> dict:
    return requests.get(f"{server.url}/stats", headers=auth, timeout=5).json()["engines"][0]


def test_a_query_queued_behind_bulk_jobs_is_answered_first(server, auth, reference):
    engine = procs.engine_pid(server)
    finished: dict[str, float] = {}

    def send(name: str, body: dict) -> requests.Response:
        response = post(server, "/v1/embeddings", body, timeout=120)
        finished[name] = time.monotonic()
        return response

    with ThreadPoolExecutor(4) as pool:
        with procs.paused(engine):
            bulk = [pool.submit(send, f"bulk {i}", {**bulk_text(i), "priority": "bulk"}) for i in range(3)]
            procs.wait_for(lambda: procs.queue_size(server, auth) == 3, 5, what="the bulk jobs queued")
            query = pool.submit(send, "query", {"input": QUERIES[0]})  # short: interactive by its size
            procs.wait_for(lambda: procs.queue_size(server, auth) == 4, 5, what="the query queued")
        np.testing.assert_allclose(dense(query.result()), reference[QUERIES[0]], atol=1e-5)
        for future in bulk:
            assert future.result().status_code == 200
    assert all(finished["query"] < finished[f"bulk {i}"] for i in range(3)), finished


def test_a_query_runs_between_the_steps_of_a_bulk_pass(server, auth, reference):
    before = engine_stats(server, auth)
    with ThreadPoolExecutor(1) as pool:
        bulk = pool.submit(post, server, "/v1/embeddings", {"input": [bulk_text(i)["input"] for i in range(3)],
                                                           "max_length": LONG, "priority": "bulk"}, timeout=120)
        procs.wait_for(lambda: engine_stats(server, auth)["bulk_queue"] == 0 and procs.queue_size(server, auth),
                       10, what="the bulk pass to begin")
        query = post(server, "/v1/embeddings", {"input": QUERIES[1], "priority": "interactive"})
        assert not bulk.done(), "the query waited for the whole bulk pass"
        assert bulk.result().status_code == 200
    np.testing.assert_allclose(dense(query), reference[QUERIES[1]], atol=1e-5)
    after = engine_stats(server, auth)
    assert after["preemptions"] == before["preemptions"] + 1
    assert after["interactive_requests"] == before["interactive_requests"] + 1
    assert after["bulk_requests"] == before["bulk_requests"] + 1


def test_stats_and_metrics_show_the_lanes(server, auth):
    # One request in each lane of its own, whatever ran before: a short query, and a bulk request.
    assert dense(post(server, "/v1/embeddings", {"input": QUERIES[2]}))
    assert dense(post(server, "/v1/embeddings", {"input": "a document", "priority": "bulk"}))
    stats = requests.get(f"{server.url}/stats", headers=auth, timeout=5).json()
    lanes = stats["lanes"]
    assert set(lanes) == {"interactive", "bulk"}
    for lane in lanes.values():
        assert {"queue_size", "requests", "average_wait_s", "average_latency_s"} <= set(lane)
    assert lanes["interactive"]["requests"] >= 1 and lanes["bulk"]["requests"] >= 1
    assert stats["config"]["interactive_max_wait_ms"] == 20
    assert stats["batching"]["bulk_pass_tokens"] > 0
    metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    for name in ("embsvc_engine_lane_queue_depth", "embsvc_engine_lane_wait_seconds",
                 "embsvc_engine_lane_latency_seconds", "embsvc_engine_preemptions_total"):
        assert name in metrics, name
    assert 'lane="interactive"' in metrics and 'lane="bulk"' in metrics
