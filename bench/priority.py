"""Queries under bulk indexing, the lone query, and the per-request cost, in one run.

    .venv/bin/python -m bench.priority [--seconds 60] [--tiny-seconds 15]

On the full-size random bge-m3 (the real model's compute), DTYPE=auto, default settings:
  1.-2. the server's lone short query (dense), end to end, timed in turns with its reference,
     a bare transformers forward of the same text in this process (bench/bare_forward.py);
  3. bulk alone: four clients in a closed loop, each sending eight 150-400-word texts (all
     kinds) per request: bulk tokens/s;
  4. the same bulk load with one client sending a five-word query (dense) every 1.5 s: the
     query's p50/p99/max, and the bulk tokens/s beside it;
  5. mixed all-kinds throughput alone (bench.run's workload: 1 to 8 texts per request);
then on the tiny model, one short text per request from 16 connections, with wrk and with a
Python client (bench/load.py), against a bare Falcon app (testkit/bare_app.py) on the same
gunicorn settings with the same clients. Prints one JSON line of figures and ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import threading
from pathlib import Path

import requests

from bench import load
from bench.bare_forward import BareForward
from testkit.model_builder import build_model
from testkit.server import GUNICORN, Server, free_port
from testkit.workload import requests_of, texts, texts_of_words

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
QUERY = "where do rivers meet the sea"  # five words, dense only
ALL_KINDS = {"return_dense": True, "return_sparse": True, "return_colbert": True, "encoding_format": "base64"}


def lone_query(server: Server, bare: BareForward, rounds: int = 6, per_round: int = 10) -> dict:
    """The server's lone query and the bare forward of the same text, timed in turns."""
    body = {"input": QUERY, "return_sparse": False, "return_colbert": False}
    load.run(server.url, TOKEN, [body] * 3, 1)  # warm-up
    served: list[float] = []
    reference: list[float] = []
    for _ in range(rounds):
        served += load.run(server.url, TOKEN, [body] * per_round, 1).latencies
        reference += bare.times(per_round)
    return {"tokens": bare.tokens, "end_to_end_p50_ms": _ms(statistics.median(served)),
            "end_to_end_p99_ms": _ms(load.percentile(sorted(served), 99)),
            "bare_forward_p50_ms": _ms(statistics.median(reference))}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def bulk_bodies() -> list[dict]:
    documents = texts_of_words(64, 150, 400, seed=3)
    return [{"input": documents[i : i + 8], **ALL_KINDS} for i in range(0, len(documents), 8)]


def tokens_of(server: Server, bodies: list[dict]) -> list[int]:
    """Each body's tokens, from /tokenize: the bulk clients then need not parse their answers."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    return [requests.post(f"{server.url}/tokenize", json={"input": b["input"]}, headers=headers,
                          timeout=60).json()["usage"]["total_tokens"] for b in bodies]


def bulk_alone(server: Server, seconds: float) -> dict:
    bodies = bulk_bodies()
    tokens = tokens_of(server, bodies)
    load.closed_loop(server.url, TOKEN, bodies, 4, min(20.0, seconds / 3), tokens)  # warm-up, and the rate
    return load.closed_loop(server.url, TOKEN, bodies, 4, seconds, tokens).figures()


def bulk_with_queries(server: Server, seconds: float) -> dict:
    """The bulk load, and a query every 1.5 s from the moment the bulk load runs."""
    result: dict = {}
    bodies = bulk_bodies()
    tokens = tokens_of(server, bodies)
    bulk = threading.Thread(target=lambda: result.update(
        bulk=load.closed_loop(server.url, TOKEN, bodies, 4, seconds, tokens).figures()))
    bulk.start()
    query = {"input": QUERY, "return_sparse": False, "return_colbert": False}
    result["queries"] = load.paced(server.url, TOKEN, query, 1.5, seconds - 3).figures()
    bulk.join()
    return result


def mixed_all_kinds(server: Server) -> dict:
    bodies = [{"input": batch, "max_length": 512, **ALL_KINDS} for batch in requests_of(texts(96), 32)]
    load.run(server.url, TOKEN, bodies[:4], 8)  # warm-up
    return load.run(server.url, TOKEN, bodies, 8).figures()


def tiny_clients(url: str, seconds: int, workdir: Path) -> dict:
    body = {"input": "what is the capital of France?", "return_sparse": False, "return_colbert": False}
    load.wrk(url, TOKEN, body, 16, 3, workdir)  # warm-up
    figures = {"wrk": load.wrk(url, TOKEN, body, 16, seconds, workdir)}
    figures["python"] = load.closed_loop(url, TOKEN, [body], 16, seconds).figures()
    return figures


def bare_falcon(seconds: int, workdir: Path) -> dict:
    """testkit/bare_app.py under the server's gunicorn settings (2 workers of 32 threads)."""
    port = free_port()
    # -c /dev/null: not the server's gunicorn.conf.py, which would start engines.
    process = subprocess.Popen([str(GUNICORN), "-c", "/dev/null", "-w", "2", "-k", "gthread", "--threads", "32",
                                "-b", f"127.0.0.1:{port}", "--log-level", "warning", "testkit.bare_app:app"],
                               cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        load.wait_listening(f"http://127.0.0.1:{port}")
        return tiny_clients(f"http://127.0.0.1:{port}", seconds, workdir)
    finally:
        process.terminate()
        process.wait(30)


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120, help="of each bulk run (its last requests finish after)")
    parser.add_argument("--tiny-seconds", type=int, default=15)
    args = parser.parse_args()
    full = build_model(ROOT / "models" / "bge-m3-full", "full")
    tiny = build_model(ROOT / "models" / "bge-m3-tiny", "tiny")
    report: dict = {}
    bare = BareForward(full, QUERY)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # A bulk request of eight long texts takes tens of seconds on a CPU: none may time out.
        server = Server(full, workdir / "full.log", API_TOKEN=TOKEN, DTYPE="auto", MAX_QUEUE_SIZE="1000",
                        REQUEST_TIMEOUT_S="900").start(timeout=600)
        try:
            report["dtype"] = requests.get(f"{server.url}/health", timeout=10).json()["dtype"]
            report["lone_query"] = lone_query(server, bare)
            report["bulk_alone"] = bulk_alone(server, args.seconds)
            report["bulk_with_queries"] = bulk_with_queries(server, args.seconds)
            report["mixed_all_kinds"] = mixed_all_kinds(server)
            report["lanes"] = requests.get(f"{server.url}/stats", headers={"Authorization": f"Bearer {TOKEN}"},
                                           timeout=10).json()["lanes"]
        finally:
            server.stop()
        server = Server(tiny, workdir / "tiny.log", API_TOKEN=TOKEN, DTYPE="auto", MAX_QUEUE_SIZE="1000").start()
        try:
            report["tiny_server"] = tiny_clients(server.url, args.tiny_seconds, workdir)
        finally:
            server.stop()
        report["tiny_bare_falcon"] = bare_falcon(args.tiny_seconds, workdir)
    report["ratios"] = ratios(report)
    print(json.dumps(report))


def ratios(r: dict) -> dict:
    lone, queries = r["lone_query"]["end_to_end_p50_ms"], r["bulk_with_queries"]["queries"]
    return {
        "lone_query_vs_bare_forward": ratio(lone, r["lone_query"]["bare_forward_p50_ms"]),
        "query_p99_under_bulk_vs_lone_p50": ratio(queries["p99_ms"], lone),
        "query_max_under_bulk_ms": queries["max_ms"],
        "bulk_with_queries_vs_bulk_alone": ratio(r["bulk_with_queries"]["bulk"]["tokens_per_s"],
                                                 r["bulk_alone"]["tokens_per_s"]),
        "tiny_wrk_vs_bare_falcon": ratio(r["tiny_server"]["wrk"]["requests_per_s"],
                                         r["tiny_bare_falcon"]["wrk"]["requests_per_s"]),
        "tiny_python_vs_bare_falcon": ratio(r["tiny_server"]["python"]["requests_per_s"],
                                            r["tiny_bare_falcon"]["python"]["requests_per_s"]),
    }


if __name__ == "__main__":
    main()
