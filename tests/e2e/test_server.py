"""Real gunicorn (2 workers) and a real engine process, over real HTTP on loopback."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from testkit import procs
from tests.e2e.conftest import TOKEN, embed

WORDS = ["alpha", "beta", "gamma", "дельта", "эпсилон", "中文", "عربي", "émoji🚀", "omega", "sigma", "kappa", "lambda"]


def test_concurrent_clients_each_get_their_own_vectors(server):
    rng = random.Random(7)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 30))) + f" #{i}" for i in range(48)]
    alone = {t: embed(server, t)["data"][0] for t in texts[:12]}
    order = texts * 2
    rng.shuffle(order)

    def one(text):
        kinds = {"return_sparse": len(text) % 2 == 0, "return_colbert": len(text) % 3 != 0}
        return text, kinds, embed(server, {"input": [text], **kinds})["data"][0]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, order))
    for text, kinds, item in results:
        assert (item["sparse_embedding"] is not None) == kinds["return_sparse"]
        assert (item["colbert_embedding"] is not None) == kinds["return_colbert"]
        if text in alone:
            np.testing.assert_allclose(item["dense_embedding"], alone[text]["dense_embedding"], atol=1e-5)
            if kinds["return_sparse"]:
                assert item["sparse_embedding"].keys() == alone[text]["sparse_embedding"].keys()
        else:
            assert len(item["dense_embedding"]) == 32


def test_stats_count_requests_from_every_worker(server, auth):
    before = requests.get(f"{server.url}/stats", headers=auth, timeout=10).json()["batching"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: embed(server, f"text {i}"), range(40)))
    after = requests.get(f"{server.url}/stats", headers=auth, timeout=10).json()["batching"]
    assert after["processed_requests"] - before["processed_requests"] == 40
    assert after["average_batch_size"] >= 1


def test_protected_endpoints_refuse_missing_or_wrong_tokens(server):
    for method, path in [("POST", "/v1/embeddings"), ("GET", "/stats"), ("GET", "/v1/models"),
                         ("GET", "/v1/models/bge-m3")]:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
            response = requests.request(method, f"{server.url}{path}", json={"input": "a"}, headers=headers,
                                        timeout=10)
            assert response.status_code == 401, (path, headers)
            assert response.json()["error"]["type"] == "authentication_error"
            assert response.headers["WWW-Authenticate"] == "Bearer"


def test_public_endpoints_and_health(server):
    health = requests.get(f"{server.url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    # Anyone may ask /health: it tells status and model; where the model runs needs a token.
    assert health.json() == {"status": "ok", "model": "BAAI/bge-m3"}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    detailed = requests.get(f"{server.url}/health/detailed", headers=auth, timeout=10).json()
    assert detailed["model"]["device"] == "cpu" and detailed["model"]["dtype"] == "float32"
    assert requests.get(f"{server.url}/openapi.json", timeout=10).json()["openapi"].startswith("3.1")
    assert requests.get(f"{server.url}/", timeout=10).json()["model"] == "BAAI/bge-m3"


def test_model_is_loaded_once_and_only_in_the_engine(server):
    log = server.log()
    assert "Using device cpu with dtype float32" in log
    assert log.count("Model loaded from") == 1
    processes = procs.children(server.process.pid)  # web workers, the engine, multiprocessing's resource tracker
    with_torch = [p.pid for p in processes if procs.maps_torch(p.pid)]
    assert with_torch == [procs.engine_pid(server)], "exactly one process (the engine) maps torch"
    assert len(processes) >= 3


def test_the_web_workers_yield_the_cores_to_the_engine(server):
    """Every thread of a web worker runs WEB_WORKER_NICE (5) nicer than the master; the engine's
    threads, the master's children, as the master."""
    (master,) = procs.niceness(server.process.pid)
    embed(server, {"input": ["every thread started"]})
    assert {pid: procs.niceness(pid) for pid in procs.worker_pids(server)} == {
        pid: {master + 5} for pid in procs.worker_pids(server)}
    assert procs.niceness(procs.engine_pid(server)) == {master}


def test_original_readme_examples_work_as_written(server):
    # The original service's README, with its URL and token replaced.
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    response = requests.post(f"{server.url}/v1/embeddings", headers=headers,
                             json={"input": ["Текст для векторизации", "Еще один текст"]})
    result = response.json()
    for emb_data in result["data"]:
        assert len(emb_data["dense_embedding"]) == 32  # 1024 on the real model
        assert len(emb_data["sparse_embedding"]) > 0
        assert len(emb_data["colbert_embedding"]) > 0

    response = requests.post(f"{server.url}/v1/embeddings", headers=headers, json={
        "input": ["Запрос пользователя"], "return_dense": True, "return_sparse": False, "return_colbert": False})
    assert response.json()["embedding_types"] == ["dense"]
    response = requests.post(f"{server.url}/v1/embeddings", headers=headers, json={
        "input": ["Ключевые слова поиска"], "return_dense": False, "return_sparse": True, "return_colbert": False})
    assert response.json()["embedding_types"] == ["sparse"]
    response = requests.post(f"{server.url}/v1/embeddings", headers=headers, json={
        "input": ["Сложный поисковый запрос"], "return_dense": True, "return_sparse": False,
        "return_colbert": True})
    assert response.json()["embedding_types"] == ["dense", "colbert"]
    response = requests.post(f"{server.url}/v1/embeddings", headers=headers, json={
        "input": ["Первый документ для индексации", "Второй документ для индексации",
                  "Третий документ для индексации"],
        "return_dense": True, "return_sparse": True, "return_colbert": False})
    result = response.json()
    assert len(result["data"]) == 3 and result["embedding_types"] == ["dense", "sparse"]
    for path in ("/health", "/stats"):  # the README's curl checks, with the token
        assert requests.get(f"{server.url}{path}", headers=headers, timeout=10).status_code == 200
