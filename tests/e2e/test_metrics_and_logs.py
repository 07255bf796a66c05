"""Real gunicorn (2 workers) with LOG_FORMAT=json, started on an empty model folder that it
downloads from a Hub stand-in: /metrics counts across workers, JSON log lines, request ids."""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from testkit import procs
from testkit.fake_hub import FakeHub
from tests.e2e.conftest import AUTH, serving

ENGINE = {"engine": "0", "device": "cpu"}


@pytest.fixture(scope="module")
def hub(tiny_model):
    with FakeHub(tiny_model, "BAAI/bge-m3") as hub:
        yield hub


@pytest.fixture(scope="module")
def server(hub, tmp_path_factory):
    """Its own server: it starts on an empty model folder, and a test here kills its engine."""
    tmp = tmp_path_factory.mktemp("json-server")
    with serving(tmp / "model", tmp, LOG_FORMAT="json", HF_ENDPOINT=hub.url, HF_HOME=str(tmp / "hf-home")) as server:
        yield server
        master = server.process.pid
    assert not list(Path(tempfile.gettempdir()).glob(f"embsvc-metrics-{master}-*")), "the metrics folder outlived it"


def log_entries(server) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def access_entries(server, request_ids: set[str], timeout: float = 10.0) -> dict[str, dict]:
    """The access records of these requests; gunicorn writes them just after answering."""
    deadline = time.monotonic() + timeout
    while True:
        found = {e["request_id"]: e for e in log_entries(server)
                 if e.get("event") == "access" and e.get("request_id") in request_ids}
        if len(found) == len(request_ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def scrape(server) -> dict[tuple[str, tuple], float]:
    response = requests.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def embeddings_count(samples, status: str) -> float:
    return value(samples, "embsvc_http_requests_total", endpoint="/v1/embeddings", method="POST", status=status)


def test_the_model_download_is_logged_with_its_progress(server, hub):
    entries = log_entries(server)
    messages = [e["message"] for e in entries]
    assert any(m.startswith("Downloading BAAI/bge-m3 from the Hugging Face Hub") for m in messages)
    assert any(m.startswith("Downloaded BAAI/bge-m3 into") for m in messages)
    progress = [e for e in entries if e.get("event") == "download_progress"]
    model_bytes = sum(len(data) for data in hub.files.values())
    assert [e for e in progress if e["unit"] == "B" and e["done"] == e["total"] == model_bytes]


def one_request(server, i: int) -> tuple[str, int, int, int]:
    """A mix of answers; every call on a new connection, so that gunicorn spreads them."""
    rid = f"spread-{i}"
    texts = [f"text number {i}"] * (1 + i % 2)
    if i % 5 == 0:
        response = requests.post(f"{server.url}/v1/embeddings", json={"input": texts},
                                 headers={"X-Request-ID": rid}, timeout=30)
    elif i % 7 == 0:
        response = requests.post(f"{server.url}/v1/embeddings", json={"input": ""},
                                 headers={**AUTH, "X-Request-ID": rid}, timeout=30)
    else:
        response = requests.post(f"{server.url}/v1/embeddings", json={"input": texts, "return_colbert": False},
                                 headers={**AUTH, "X-Request-ID": rid}, timeout=30)
    assert response.headers["X-Request-ID"] == rid
    tokens = response.json()["usage"]["total_tokens"] if response.status_code == 200 else 0
    return rid, response.status_code, tokens, len(texts) if response.status_code == 200 else 0


def test_requests_spread_over_workers_are_all_counted(server):
    before = scrape(server)
    results: list[tuple[str, int, int, int]] = []
    workers: set[int] = set()
    with ThreadPoolExecutor(8) as pool:
        for round_ in range(10):  # until both workers have served some
            batch = list(pool.map(lambda i: one_request(server, i), range(round_ * 30, round_ * 30 + 30)))
            results += batch
            served = access_entries(server, {rid for rid, *_ in batch})
            assert len(served) == len(batch)
            workers |= {e["pid"] for e in served.values()}
            if len(workers) >= 2:
                break
    assert len(workers) >= 2, "gunicorn sent every request to one worker"

    statuses = Counter(status for _, status, _, _ in results)
    assert set(statuses) == {200, 400, 401}
    scrapes = [scrape(server) for _ in range(8)]  # answered by either worker
    for after in scrapes:
        for status, count in statuses.items():
            assert embeddings_count(after, str(status)) - embeddings_count(before, str(status)) == count
    after = scrapes[-1]
    latency = "embsvc_http_request_duration_seconds_count"
    assert (value(after, latency, endpoint="/v1/embeddings", method="POST")
            - value(before, latency, endpoint="/v1/embeddings", method="POST")) == len(results)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **ENGINE, **labels) - value(before, name, **ENGINE, **labels)

    assert delta("embsvc_engine_requests_total", outcome="ok") == statuses[200]
    assert delta("embsvc_engine_batch_requests_sum") == statuses[200]
    assert 1 <= delta("embsvc_engine_batch_requests_count") <= statuses[200]
    assert delta("embsvc_engine_tokens_total") == sum(tokens for _, _, tokens, _ in results)
    assert delta("embsvc_engine_texts_total") == sum(texts for *_, texts in results)
    assert value(after, "embsvc_engine_queue_depth", **ENGINE) == 0
    assert value(after, "embsvc_engine_state", **ENGINE, state="ready") == 1
    assert value(after, "embsvc_http_requests_in_progress", endpoint="/v1/embeddings") == 0


def test_metrics_live_in_a_private_folder_of_this_server(server):
    """In the temp folder, not on /dev/shm (whose filling must not reach the metrics' files)."""
    assert not list(Path("/dev/shm").glob(f"embsvc-metrics-{server.process.pid}-*"))
    folders = list(Path(tempfile.gettempdir()).glob(f"embsvc-metrics-{server.process.pid}-*"))
    assert len(folders) == 1
    assert folders[0].stat().st_mode & 0o077 == 0
    writers = {int(p.stem.rsplit("_", 1)[1]) for p in folders[0].glob("counter_*.db")}
    assert writers & set(procs.worker_pids(server)), "the live workers write their counters there"


def test_request_id_is_echoed_and_in_the_access_line(server):
    given = requests.post(f"{server.url}/v1/embeddings", json={"input": "trace me"},
                          headers={**AUTH, "X-Request-ID": "e2e-trace-1"}, timeout=30)
    made = requests.get(f"{server.url}/v1/models", headers=AUTH, timeout=30)
    assert given.headers["X-Request-ID"] == "e2e-trace-1"
    made_id = made.headers["X-Request-ID"]
    assert len(made_id) == 32
    lines = access_entries(server, {"e2e-trace-1", made_id})
    assert lines["e2e-trace-1"]["status"] == 200 and lines["e2e-trace-1"]["path"] == "/v1/embeddings"
    assert lines["e2e-trace-1"]["method"] == "POST" and lines["e2e-trace-1"]["duration_ms"] > 0
    assert lines[made_id]["path"] == "/v1/models" and lines[made_id]["logger"] == "gunicorn.access"
    # The engine's part of the time and its parts: in the answer's Server-Timing header and in the access line.
    timing = re.fullmatch(r"engine;dur=([0-9.]+), queue;dur=([0-9.]+), passes;dur=([0-9.]+)",
                          given.headers["Server-Timing"])
    assert timing
    engine, queue, passes = (float(ms) for ms in timing.groups())
    line = lines["e2e-trace-1"]
    assert (line["engine_ms"], line["queue_ms"], line["passes_ms"]) == (engine, queue, passes)
    assert passes > 0 and queue + passes <= engine <= line["duration_ms"]
    assert "Server-Timing" not in made.headers and "engine_ms" not in lines[made_id]  # no engine asked


def test_every_line_is_json(server):
    lines = server.log().splitlines()
    # transformers installs a stderr handler of its own when the engine imports it,
    # so its weight-loading report is plain text until the engine calls
    # gpu_pool.model.load.adopt_transformers_logging(); only that window is excused.
    start = next(i for i, line in enumerate(lines) if "Using device cpu" in line)
    end = next(i for i, line in enumerate(lines) if "Model loaded from" in line)
    outside = lines[:start] + lines[end:]
    assert len(outside) > 20
    for line in outside:
        entry = json.loads(line)
        assert {"time", "level", "logger", "pid", "message"} <= entry.keys(), line
    loggers = {json.loads(line)["logger"] for line in outside}
    assert {"gunicorn.error", "gunicorn.access", "gpu_pool.engine", "gpu_pool.pool"} <= loggers


def test_a_dead_worker_keeps_its_counts(server):
    before = embeddings_count(scrape(server), "200")
    for i in range(6):
        requests.post(f"{server.url}/v1/embeddings", json={"input": f"before the kill {i}"}, headers=AUTH,
                      timeout=30).raise_for_status()
    workers = procs.worker_pids(server)
    assert len(workers) == 2, workers
    os.kill(min(workers), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while len(set(procs.worker_pids(server)) - set(workers)) < 1:  # gunicorn forks a new one
        assert time.monotonic() < deadline, "no new worker"
        time.sleep(0.1)
    server.wait_healthy()
    for _ in range(4):  # whichever worker answers, the dead one's requests are still there
        assert embeddings_count(scrape(server), "200") - before == 6


def test_an_engine_restart_shows_in_the_metrics(server):
    restarts = value(scrape(server), "embsvc_engine_restarts_total", **ENGINE)
    os.kill(procs.engine_pid(server), signal.SIGKILL)
    seen_states = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        samples = scrape(server)
        state = [s for s in ("loading", "ready", "unavailable", "stopped")
                 if value(samples, "embsvc_engine_state", **ENGINE, state=s) == 1]
        assert len(state) == 1
        seen_states.add(state[0])
        if value(samples, "embsvc_engine_restarts_total", **ENGINE) == restarts + 1 and state == ["ready"]:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the engine did not come back: {seen_states}")
    assert seen_states & {"unavailable", "loading"}, "the restart went unseen"
