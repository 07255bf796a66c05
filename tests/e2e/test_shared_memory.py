"""A small and a full /dev/shm (issue 12's reproduction): the server in a mount namespace whose
/dev/shm is a 4 MiB tmpfs, as in a container run without ``--shm-size``. Before, 32 concurrent
requests of eight long texts killed every web worker and the engine with SIGBUS and no client
got an answer. Now every request is answered, 200 or a 503 that names shared memory, and
nothing dies."""

from __future__ import annotations

import os
import random
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from testkit import procs
from testkit.server import Server
from tests.e2e.conftest import AUTH, dense, post

WORDS = ["alpha", "beta", "gamma", "дельта", "中文", "river", "stone", "cloud", "rain", "wind", "fire", "light"]
ALL_KINDS = {"return_dense": True, "return_sparse": True, "return_colbert": True}
pytestmark = pytest.mark.slow


def texts(rng: random.Random, words: int) -> list[str]:
    return [" ".join(rng.choices(WORDS, k=words)) for _ in range(8)]


@pytest.fixture(scope="module")
def small(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    server = Server(tiny_model, tmp_path_factory.mktemp("small-shm") / "server.log", shm_size="4m",
                    API_TOKEN=AUTH["Authorization"].split()[1]).start()
    yield server
    server.stop()


def answer(server: Server, body: dict) -> tuple[int, str, str | None]:
    """(status, error message, Retry-After); status 0: no answer at all."""
    try:
        r = post(server, "/v1/embeddings", body, timeout=120)
    except requests.RequestException as exc:
        return 0, type(exc).__name__, None
    return r.status_code, "" if r.status_code == 200 else r.json()["detail"], r.headers.get("Retry-After")


def assert_refusal(status: int, message: str, retry_after: str | None) -> None:
    assert status == 503 and retry_after == "1", (status, message)
    assert message.startswith("shared memory is full") and "--shm-size" in message, message


def test_a_full_small_shm_refuses_requests_and_kills_nothing(small):
    workers, engine = procs.worker_pids(small), procs.engine_pid(small)
    health = requests.get(f"{small.url}/health/detailed", headers=AUTH, timeout=5).json()["shared_memory"]
    assert health["size_bytes"] == 4 << 20 and health["path"] == "/dev/shm"
    rng = random.Random(12)
    # 32 at once, each of eight long texts and all kinds: about 1.2 MiB of /dev/shm each, so three
    # fit at a time; two need 6 MiB, more than the whole of it.
    bodies = [{"input": texts(rng, 2000 if i in (5, 17) else 400), **ALL_KINDS} for i in range(32)]
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda body: answer(small, body), bodies))

    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 503}, answers  # 0 would be a client left without an answer
    assert statuses.count(200) >= 3, statuses
    for status, message, retry_after in answers:
        if status == 503:
            assert_refusal(status, message, retry_after)
    assert "holds only 4.0 MiB in all" in answers[5][1] and "Send fewer or shorter inputs" in answers[5][1]
    log = small.log()
    assert "SIGBUS" not in log and "code -7" not in log, log
    assert procs.worker_pids(small) == workers and procs.engine_pid(small) == engine
    assert requests.get(f"{small.url}/health", timeout=5).status_code == 200
    assert procs.engine_restarts(small, AUTH) == 0
    assert dense(post(small, "/v1/embeddings", {"input": "a normal request", **ALL_KINDS}))


def test_a_shm_filled_by_something_else_costs_requests_not_processes(small):
    """Filled to the last page from outside: the requests that need room get 503, /metrics (whose
    files are not on /dev/shm) and /health still answer, and all is served once room is back."""
    workers = procs.worker_pids(small)
    filler = small.shm_path() / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        free = os.statvfs(small.shm_path()).f_bavail * os.statvfs(small.shm_path()).f_frsize
        os.posix_fallocate(fd, 0, free)
        assert os.statvfs(small.shm_path()).f_bavail == 0
        # Larger than any segment a worker keeps for reuse (those still serve small requests).
        assert_refusal(*answer(small, {"input": texts(random.Random(13), 400), **ALL_KINDS}))
        for path in ("/metrics", "/stats", "/health"):
            assert requests.get(f"{small.url}{path}", headers=AUTH, timeout=5).status_code == 200, path
        stats = requests.get(f"{small.url}/stats", headers=AUTH, timeout=5).json()["shared_memory"]
        # Full, but for a page or so that the refused request's clean-up may have given back meanwhile.
        assert stats["free_bytes"] <= 64 * 1024 and stats["used_bytes"] + stats["free_bytes"] == stats["size_bytes"]
    finally:
        os.close(fd)
        filler.unlink()
    assert dense(post(small, "/v1/embeddings", {"input": texts(random.Random(14), 400), **ALL_KINDS}))
    assert "SIGBUS" not in small.log() and procs.worker_pids(small) == workers


def test_the_start_log_gives_the_size_and_warns_that_it_is_too_small(small):
    log = small.log()
    assert "Shared memory: /dev/shm holds 4 MiB" in log
    warning = next(line for line in log.splitlines() if "WARNING" in line and "Shared memory" in line)
    # The tiny model (32 floats a vector): 50 requests of 8192 tokens need 53 MiB.
    for words in ("less than the 53 MiB", "MAX_QUEUE_SIZE=50", "MAX_TOKENS=8192", "it holds 3 such requests at once",
                  "--shm-size=64m", "emptyDir"):
        assert words in warning, warning


def test_nothing_is_left_in_the_namespace_s_shm_after_exit(small):
    """Last in this module: it stops the module's server (the same settings a server of its own had)."""
    server = small
    rng = random.Random(15)
    bodies = [{"input": texts(rng, 300 if i % 2 else 20), **ALL_KINDS} for i in range(16)]  # large and pooled
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda body: requests.post(f"{server.url}/v1/embeddings", json=body, timeout=60,
                                                            headers=AUTH).status_code,
                                 bodies))
    assert set(statuses) <= {200, 503} and 200 in statuses
    # A large request that waits for room takes back what its worker kept: the burst may end with
    # nothing kept. Small requests one at a time, with room to spare, leave their segments kept.
    for body in bodies[0:4:2]:
        assert requests.post(f"{server.url}/v1/embeddings", json=body, timeout=60, headers=AUTH).status_code == 200
    assert server.shm_entries(), "the workers keep finished segments for reuse while they run"
    os.kill(procs.engine_pid(server), signal.SIGKILL)  # a crash on the way out, for good measure
    procs.wait_for(lambda: requests.get(f"{server.url}/health", timeout=5).status_code == 200, 60)
    assert server.stop() == 0
    assert server.shm_left == [], server.shm_left
