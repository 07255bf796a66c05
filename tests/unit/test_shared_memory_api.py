"""A full /dev/shm as the API tells it: 503 with Retry-After and what to raise; its use on
/health and /stats."""

from __future__ import annotations

from gpu_pool import SharedMemoryFull
from tests.unit.conftest import AUTH, assert_error, post

FULL = "shared memory is full: this request needs 1.5 MiB of /dev/shm, which has 0.2 MiB free of 4.0 MiB"
TOO_BIG = "shared memory is full: this request needs 6.1 MiB of /dev/shm, which holds only 4.0 MiB in all"


def test_a_full_shm_is_a_503_that_says_what_to_raise(client, engine):
    engine.fail_with = SharedMemoryFull(FULL, retry_after_s=1.0, never_fits=False)
    result = post(client, "/v1/embeddings", {"input": "a"})
    message = assert_error(result, 503, "overloaded_error")["detail"]
    assert result.headers["Retry-After"] == "1"
    assert message.startswith(FULL) and "Retry shortly" in message
    for advice in ("--shm-size", "shm_size", "emptyDir", "medium: Memory"):
        assert advice in message, message


def test_a_request_larger_than_the_whole_shm_says_to_send_less(client, engine):
    engine.fail_with = SharedMemoryFull(TOO_BIG, retry_after_s=1.0, never_fits=True)
    result = post(client, "/v1/rerank", {"query": "q", "documents": ["a", "b"]})
    message = assert_error(result, 503, "overloaded_error")["detail"]
    assert "Send fewer or shorter inputs" in message and "--shm-size" in message


def test_tei_clients_get_their_overloaded_shape(client, engine):
    engine.fail_with = SharedMemoryFull(FULL, retry_after_s=1.0, never_fits=False)
    result = post(client, "/embed", {"inputs": "a"})
    assert result.status_code == 429 and result.json["error_type"] == "Overloaded"
    assert "--shm-size" in result.json["error"]


def test_detailed_health_and_stats_show_the_shared_memory_and_health_does_not(client, engine):
    expected = engine.shared_memory()
    assert set(expected) == {"path", "size_bytes", "used_bytes", "free_bytes", "server_bytes"}
    assert client.simulate_get("/health/detailed", headers=AUTH).json["shared_memory"] == expected
    assert "shared_memory" not in client.simulate_get("/health").json
    assert client.simulate_get("/stats", headers=AUTH).json["shared_memory"] == expected
