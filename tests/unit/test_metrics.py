"""GET /metrics through falcon's TestClient: request counts, latencies, and the engines' figures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from falcon import testing
from prometheus_client.parser import text_string_to_metric_families

from embsvc.app import create_app
from embsvc.master import metrics_dir
from gpu_pool import EngineSnapshot, EngineState, EngineStats, batching_stats, lane_stats
from tests.unit.conftest import AUTH


@pytest.fixture
def settings(make_settings):
    return make_settings()


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """sample name and sorted labels -> value."""
    result = client.simulate_get("/metrics")
    assert result.status_code == 200, result.text
    samples = {}
    for family in text_string_to_metric_families(result.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_requests_are_counted_by_endpoint_method_and_status(client):
    for _ in range(3):
        assert client.simulate_post("/v1/embeddings", json={"input": "hello"}, headers=AUTH).status_code == 200
    assert client.simulate_post("/v1/embeddings", json={"input": "hello"}).status_code == 401
    assert client.simulate_post("/v1/embeddings", json={"input": ""}, headers=AUTH).status_code == 400
    assert client.simulate_get("/v1/models/bge-m3", headers=AUTH).status_code == 200
    assert client.simulate_get("/v1/models/some-other-model", headers=AUTH).status_code == 404
    assert client.simulate_get("/no/such/path").status_code == 404
    assert client.simulate_delete("/health").status_code == 405

    samples = scrape(client)
    requests = "embsvc_http_requests_total"
    assert value(samples, requests, endpoint="/v1/embeddings", method="POST", status="200") == 3
    assert value(samples, requests, endpoint="/v1/embeddings", method="POST", status="401") == 1
    assert value(samples, requests, endpoint="/v1/embeddings", method="POST", status="400") == 1
    # The route, not the path: one series for every model id.
    assert value(samples, requests, endpoint="/v1/models/{model_id}", method="GET", status="200") == 1
    assert value(samples, requests, endpoint="/v1/models/{model_id}", method="GET", status="404") == 1
    assert value(samples, requests, endpoint="unmatched", method="GET", status="404") == 1
    assert value(samples, requests, endpoint="/health", method="DELETE", status="405") == 1
    assert not [key for key in samples if "/no/such/path" in str(key)]

    latency = "embsvc_http_request_duration_seconds"
    assert value(samples, f"{latency}_count", endpoint="/v1/embeddings", method="POST") == 5
    assert value(samples, f"{latency}_bucket", endpoint="/v1/embeddings", method="POST", le="+Inf") == 5
    assert value(samples, f"{latency}_sum", endpoint="/v1/embeddings", method="POST") > 0
    # Only the scrape itself is in progress while it is served.
    assert value(samples, "embsvc_http_requests_in_progress", endpoint="/v1/embeddings") == 0
    assert value(samples, "embsvc_http_requests_in_progress", endpoint="/metrics") == 1


def test_the_scrape_counts_itself_on_the_next_scrape(client):
    scrape(client)
    samples = scrape(client)
    assert value(samples, "embsvc_http_requests_total", endpoint="/metrics", method="GET", status="200") == 1


def test_engine_figures_come_from_the_engine_snapshot(client, engine, monkeypatch):
    figures = {"processed_requests": 40, "failed_requests": 2, "dropped_requests": 4, "batches": 10,
               "batched_requests": 25, "batched_inputs": 60, "tokens": 900, "processing_seconds": 1.5,
               "preemptions": 6, "interactive_requests": 30, "interactive_wait_seconds": 0.3,
               "interactive_latency_seconds": 0.9, "bulk_requests": 10, "bulk_wait_seconds": 8.0,
               "bulk_latency_seconds": 20.0, "interactive_queue": 1, "bulk_queue": 3, "bulk_pass_tokens": 2048}
    monkeypatch.setattr(engine, "snapshot", lambda: [
        EngineSnapshot(0, "cuda:0", EngineState.READY, queue_size=5, restarts=3, stats=EngineStats(**figures)),
        EngineSnapshot(1, "cuda:1", EngineState.UNAVAILABLE, queue_size=5, restarts=7, stats=EngineStats(**figures)),
    ])
    samples = scrape(client)
    first = {"engine": "0", "device": "cuda:0"}
    second = {"engine": "1", "device": "cuda:1"}
    assert value(samples, "embsvc_engine_state", **first, state="ready") == 1
    assert value(samples, "embsvc_engine_state", **first, state="unavailable") == 0
    assert value(samples, "embsvc_engine_state", **second, state="unavailable") == 1
    assert value(samples, "embsvc_engine_state", **second, state="ready") == 0
    assert {k[1] for k in samples if k[0] == "embsvc_engine_state"} >= {
        tuple(sorted({**first, "state": s.name.lower()}.items())) for s in EngineState}
    assert value(samples, "embsvc_engine_queue_depth", **first) == 5
    assert value(samples, "embsvc_engine_restarts_total", **first) == 3
    assert value(samples, "embsvc_engine_restarts_total", **second) == 7
    assert value(samples, "embsvc_engine_requests_total", **first, outcome="ok") == 40
    assert value(samples, "embsvc_engine_requests_total", **first, outcome="failed") == 2
    assert value(samples, "embsvc_engine_texts_total", **first) == 60
    assert value(samples, "embsvc_engine_tokens_total", **first) == 900
    assert value(samples, "embsvc_engine_batch_requests_count", **first) == 10
    assert value(samples, "embsvc_engine_batch_requests_sum", **first) == 25
    assert value(samples, "embsvc_engine_batch_texts_sum", **first) == 60
    assert value(samples, "embsvc_engine_batch_duration_seconds_sum", **first) == 1.5
    assert value(samples, "embsvc_engine_requests_total", **first, outcome="dropped") == 4
    assert value(samples, "embsvc_engine_preemptions_total", **first) == 6
    assert value(samples, "embsvc_engine_bulk_pass_tokens", **first) == 2048
    assert value(samples, "embsvc_engine_lane_queue_depth", **first, lane="bulk") == 3
    assert value(samples, "embsvc_engine_lane_wait_seconds_count", **first, lane="interactive") == 30
    assert value(samples, "embsvc_engine_lane_wait_seconds_sum", **first, lane="interactive") == 0.3
    assert value(samples, "embsvc_engine_lane_latency_seconds_sum", **first, lane="bulk") == 20
    # Read at scrape time: a change in the engine shows at once.
    figures["tokens"] = 1000
    assert value(scrape(client), "embsvc_engine_tokens_total", **first) == 1000


def test_metrics_need_no_token_and_speak_both_formats(client):
    plain = client.simulate_get("/metrics")
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/plain")
    assert "# TYPE embsvc_http_requests_total counter" in plain.text
    openmetrics = client.simulate_get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


def test_metrics_is_listed_in_root_and_openapi(client):
    assert client.simulate_get("/").json["endpoints"]["metrics"] == "GET /metrics"
    operation = client.simulate_get("/openapi.json").json["paths"]["/metrics"]["get"]
    assert operation["security"] == []
    assert "text/plain" in operation["responses"]["200"]["content"]


def test_apps_do_not_share_counts(settings, engine):
    # Each app has its own registry: no "duplicated timeseries" and no leaking counts.
    first = testing.TestClient(create_app(settings, engine))
    first.simulate_get("/health")
    second = testing.TestClient(create_app(settings, engine))
    samples = scrape(second)
    assert ("embsvc_http_requests_total",
            (("endpoint", "/health"), ("method", "GET"), ("status", "200"))) not in samples


def test_multiprocess_mode_refuses_storage_chosen_too_early(settings, engine, tmp_path):
    # This test process imported prometheus_client without PROMETHEUS_MULTIPROC_DIR:
    # its metrics live in memory, which a multiprocess scrape would never see.
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        create_app(settings, engine, tmp_path)


def test_metrics_folder_is_fresh_private_and_removed(monkeypatch):
    monkeypatch.setenv(metrics_dir.ENV, "/somewhere/else")
    first = metrics_dir.create()
    second = metrics_dir.create()
    try:
        assert first != second, "every start gets a folder of its own"
        assert second.is_dir() and not any(second.iterdir())
        assert second.name.startswith(f"embsvc-metrics-{os.getpid()}-")
        # Not where requests' arrays can fill the file system: a full /dev/shm must not kill a worker.
        assert second.parent == Path(tempfile.gettempdir())
        assert second.stat().st_dev != os.stat("/dev/shm").st_dev
        assert os.environ[metrics_dir.ENV] == str(second)
        assert second.stat().st_mode & 0o077 == 0, "only the server's user may read or write it"
    finally:
        metrics_dir.remove(first)
        metrics_dir.remove(second)
    assert not first.exists() and not second.exists()
    assert metrics_dir.ENV not in os.environ


def test_dead_worker_loses_its_live_gauges_only(tmp_path: Path):
    for name in ("gauge_livesum_111.db", "gauge_livesum_222.db", "counter_111.db", "histogram_111.db"):
        (tmp_path / name).write_bytes(b"")
    metrics_dir.mark_dead(tmp_path, 111)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_111.db", "gauge_livesum_222.db",
                                                          "histogram_111.db"]


def test_stats_add_the_engines_up():
    one = EngineSnapshot(0, "cuda:0", EngineState.READY, queue_size=2, restarts=0, stats=EngineStats(
        processed_requests=3, batches=2, batched_requests=4, batched_inputs=6, tokens=100, processing_seconds=0.5,
        interactive_requests=2, interactive_wait_seconds=0.2, interactive_latency_seconds=0.4, bulk_queue=1,
        bulk_pass_tokens=512))
    two = EngineSnapshot(1, "cuda:1", EngineState.READY, queue_size=1, restarts=0, stats=EngineStats(
        processed_requests=1, batches=2, batched_requests=2, batched_inputs=2, tokens=50, processing_seconds=0.3,
        interactive_requests=2, interactive_wait_seconds=0.6, interactive_latency_seconds=1.2, bulk_queue=2,
        bulk_pass_tokens=1024, dropped_requests=1))
    batching = batching_stats([one, two])
    assert batching["queue_size"] == 3 and batching["processed_requests"] == 4 and batching["batches"] == 4
    assert batching["average_batch_size"] == 1.5 and batching["average_batch_inputs"] == 2
    assert batching["average_processing_time"] == pytest.approx(0.2)
    assert batching["tokens_processed"] == 150 and batching["dropped_requests"] == 1
    assert batching["bulk_pass_tokens"] == 1024, "the largest engine's"
    lanes = lane_stats([one, two])
    assert lanes["interactive"] == {"queue_size": 0, "requests": 4, "average_wait_s": pytest.approx(0.2),
                                    "average_latency_s": pytest.approx(0.4)}
    assert lanes["bulk"] == {"queue_size": 3, "requests": 0, "average_wait_s": 0, "average_latency_s": 0}
    assert one.as_dict()["state"] == "ready" and one.as_dict()["tokens"] == 100
