"""The cross-encoder's throughput against FlagReranker, and a query's latency under a bulk rerank load.

    .venv/bin/python -m bench.rerank [--pairs 48] [--per-request 16] [--words 40 160] [--turns 2]
                                     [--seconds 45] [--size full|tiny] [--part all|throughput|latency]

On the full-size random bge-reranker-v2-m3 (testkit/reranker_builder.py: the real model's compute),
served beside the tiny bge-m3 (this benchmark asks nothing of it), DTYPE=auto, default settings:

1. throughput, in turns after a warm-up of each: the server (real gunicorn, HTTP, /v1/rerank with
   the cross-encoder named) ranks the same (query, passage) pairs as FlagEmbedding's
   ``FlagReranker.compute_score`` does in this process (its defaults: batch_size 128, max_length 512,
   float32 on a CPU). The passages have ``--words`` words (40 to 160: pairs of about 60 to 400
   tokens); the server's requests hold ``--per-request`` passages each and go out from 4
   connections at once; each turn times both on every pair once. Pairs/s of each, and their ratio;
2. a query (a rerank of 4 short passages: interactive) alone, then every 1.5 s (or three times its
   lone time, where that is longer) beside a bulk rerank
   load (4 clients in a closed loop, the same requests, sent as ``"priority": "bulk"``): the query's
   p50/p99/max, and the bulk pairs/s beside it. The bulk load counts every request sent in its
   window, however late its answer.

Prints each turn, then one JSON line of figures and ratios. The turns let both sides see the machine
in the same state: a shared machine's speed drifts between minutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import requests

from testkit import httpload
from testkit.model_builder import build_model
from testkit.reranker_builder import build_reranker
from testkit.server import TOKEN, Server
from testkit.workload import texts_of_words

if TYPE_CHECKING:  # imported where used: testkit.httpload's load processes import this module as they start
    from FlagEmbedding import FlagReranker

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
QUERY = "how do rivers shape the valleys they run through"
CLIENTS = 4


def rerank_requests(server: Server, documents: list[str], per_request: int) -> list[httpload.Request]:
    """/v1/rerank requests of the cross-encoder over ``documents``, each weighed by its pairs. They say
    they are bulk, as an indexer would: a request of few short pairs would otherwise count as a query."""
    out = []
    for i in range(0, len(documents), per_request):
        chunk = documents[i : i + per_request]
        body = orjson.dumps({"model": "bge-reranker-v2-m3", "query": QUERY, "documents": chunk, "priority": "bulk"})
        out.append(httpload.Request(httpload.post("/v1/rerank", body, server.auth), len(chunk)))
    return out


def served_pairs_per_s(server: Server, work: list[httpload.Request]) -> float:
    result = httpload.run("127.0.0.1", server.port, work, CLIENTS, 1, once=True)
    if result.statuses.total() != len(result.latencies):
        raise RuntimeError(f"the server refused some requests: {result.statuses}")
    return result.weight / result.seconds  # unrounded: a slow machine's rate is well under 1


def flag_pairs_per_s(reference: FlagReranker, documents: list[str]) -> float:
    started = time.perf_counter()
    reference.compute_score([(QUERY, d) for d in documents])
    return len(documents) / (time.perf_counter() - started)


def throughput(server: Server, reference: FlagReranker, work: list[httpload.Request], documents: list[str],
               turns: int) -> dict:
    served_pairs_per_s(server, work[:1])  # warm-up: the engine's first passes, the tokenizer
    flag_pairs_per_s(reference, documents[:1])
    print(json.dumps({"warm": True}), flush=True)
    served, flag = [], []
    for turn in range(turns):
        served.append(served_pairs_per_s(server, work))
        flag.append(flag_pairs_per_s(reference, documents))
        print(json.dumps({"turn": turn, "server_pairs_per_s": round(served[-1], 4),
                          "flagreranker_pairs_per_s": round(flag[-1], 4)}), flush=True)
    server_median, flag_median = statistics.median(served), statistics.median(flag)
    return {"pairs": len(documents), "turns": turns, "server_pairs_per_s": round(server_median, 4),
            "flagreranker_pairs_per_s": round(flag_median, 4), "ratio": round(server_median / flag_median, 2)}


def query_request(server: Server) -> list[httpload.Request]:
    short = ["rivers cut valleys", "the sea at night", "mountain rain", "a quiet town"]
    # Interactive by its size with the real tokenizer (four pairs of some 20 tokens); testkit's test tokenizer
    # makes it 153, past INTERACTIVE_MAX_TOKENS: it says what it is, as a search's rerank may.
    body = orjson.dumps({"model": "bge-reranker-v2-m3", "query": QUERY, "documents": short,
                         "priority": "interactive"})
    return [httpload.Request(httpload.post("/v1/rerank", body, server.auth), len(short))]


def query_alone(server: Server, work: list[httpload.Request], seconds: float) -> dict:
    """After a warm-up of a query and a bulk request (the engine's first passes of each size), a
    query every 0.5 s or as soon as the last is answered; each one sent in the window is counted."""
    httpload.run("127.0.0.1", server.port, [*query_request(server), *work[:1]], 2, 1, once=True)
    return httpload.run("127.0.0.1", server.port, query_request(server), 1, 1, seconds, drain=True,
                        pace_s=0.5).figures("pairs")


def query_under_bulk(server: Server, work: list[httpload.Request], seconds: float, lone_s: float) -> dict:
    """A query every 1.5 s, or every three lone queries' time where one takes longer than half a
    second (a slow machine): queries that alone would fill the device measure no lane."""
    result: dict = {}
    pace_s = max(1.5, 3 * lone_s)

    def bulk() -> None:
        result["bulk"] = httpload.run("127.0.0.1", server.port, work, CLIENTS, 1, seconds,
                                      drain=True).figures("pairs")

    thread = threading.Thread(target=bulk)
    thread.start()
    time.sleep(2.0)  # the bulk passes are under way
    result["query"] = httpload.run("127.0.0.1", server.port, query_request(server), 1, 1, seconds - 4, drain=True,
                                   pace_s=pace_s).figures("pairs")
    result["query_pace_s"] = pace_s
    thread.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=48, help="pairs per turn")
    parser.add_argument("--per-request", type=int, default=16, help="passages in one request")
    parser.add_argument("--words", type=int, nargs=2, default=(40, 160), help="words of a passage: low high")
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=45.0, help="of the bulk load beside the queries")
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--part", choices=("all", "throughput", "latency"), default="all",
                        help="throughput (1.) or latency (2.) alone, each within ten minutes on a slow machine")
    args = parser.parse_args()

    bge_m3 = build_model(MODELS / "bge-m3-tiny", "tiny")  # served beside it; nothing is asked of it
    reranker = build_reranker(MODELS / f"bge-reranker-v2-m3-{args.size}", args.size)
    # In the six languages of testkit's workload; a pair past FlagReranker's 512 tokens is cut.
    documents = texts_of_words(args.pairs, *args.words, seed=7)
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as folder:
        server = Server(bge_m3, Path(folder) / "server.log", API_TOKEN=TOKEN, RERANKER_PATH=str(reranker),
                        DTYPE="auto", MAX_QUEUE_SIZE="1000", REQUEST_TIMEOUT_S="900").start(timeout=600)
        try:
            work = rerank_requests(server, documents, args.per_request)
            result: dict = {"model": args.size, "dtype": reranker_dtype(server), "words": args.words,
                            "per_request": args.per_request}
            if args.part in ("all", "throughput"):
                from FlagEmbedding import FlagReranker

                reference = FlagReranker(str(reranker), use_fp16=False, devices="cpu")  # float32, as on a CPU
                result["throughput"] = throughput(server, reference, work, documents, args.turns)
                del reference  # its memory back before the load
            if args.part in ("all", "latency"):
                result["query_alone"] = query_alone(server, work, 20.0)
                print(json.dumps({"query_alone": result["query_alone"]}), flush=True)
                lone_s = result["query_alone"]["p50_ms"] / 1000
                result["query_under_bulk"] = query_under_bulk(server, work, args.seconds, lone_s)
                under = result["query_under_bulk"]["query"]
                result["query_p99_under_bulk_vs_lone_p50"] = round(under["p99_ms"] / 1000 / lone_s, 2)
        finally:
            server.stop()
    print(json.dumps(result))


def reranker_dtype(server: Server) -> str:
    info = requests.get(f"{server.url}/info", headers=server.auth, timeout=30).json()
    return str(info["reranker"]["model_dtype"])


if __name__ == "__main__":
    main()
