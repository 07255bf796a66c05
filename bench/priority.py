"""Queries under bulk indexing, the lone query, and the per-request cost, in one run.

    .venv/bin/python -m bench.priority [--seconds 60] [--tiny-seconds 15]
    .venv/bin/python -m bench.priority --bare-forward MODEL_FOLDER "text"     (that alone: one JSON line)
    .venv/bin/python -m bench.priority --host-cost [--turns 3] [--requests 4000] [--other TREE]  (alone, see below)
    .venv/bin/python -m bench.priority --lanes RUNS [--seconds 75] [--words 60 150]  (1., then 3.-4. RUNS times)

On the full-size random bge-m3 (the real model's compute), DTYPE=auto, default settings:
  1.-2. the server's lone short query (dense), end to end, timed in turns with its reference,
     a bare transformers forward of the same text in this process (``BareForward``), so that
     both see the machine in the same state (a shared machine's speed drifts by a quarter
     between minutes);
  3. bulk alone: four clients in a closed loop, each sending eight 150-400-word texts (all
     kinds) per request: bulk tokens/s;
  4. the same bulk load with one client sending a five-word query (dense) every 1.5 s: the
     query's p50/p99/max, and the bulk tokens/s beside it (``--lanes``: and where the slowest
     query's time went, from the access log: its web worker's, the engine's, the engine's
     queue and passes);
  5. mixed all-kinds throughput alone (bench.run's workload: 1 to 8 texts per request);
then on the tiny model, one short text per request from 16 connections, with wrk and with
testkit's load generator (testkit/httpload.py), against a bare Falcon app (testkit/bare_app.py)
on the same gunicorn settings with the same clients. Prints one JSON line of figures and ratios.
The bulk loads count every request sent in their window, however late its answer.

``--host-cost``: the host's CPU per short request, per process role, on the tiny model with the
server's default DTYPE (auto). Four servers are up at once and take turns, in a rotating order: the server (its
buffered worker), the server under gunicorn's gthread (``GUNICORN_CMD_ARGS=-k gthread``), and
the bare Falcon app under each of the two worker classes. Each turn sends a fixed number of requests (one
short text each) from 16 connections (testkit's load generator, 2 processes) and reads the
CPU time (utime + stime, /proc/PID/stat) and the context switches (/proc/PID/task/*/status) of
the engine and of each web worker before and after: CPU time moves less than a rate while
others load the machine. Prints each turn, then one JSON line: per target the medians of req/s
and, per request and role, µs of CPU and context switches; and the ratios.

``--host-cost --other TREE``: a change's before and after. TREE is another checkout (``git
worktree add /tmp/base HEAD~1``), run on this checkout's virtual environment; its server
("other"), this one's ("server") and the bare app under gthread take the turns, and the ratios
compare this server's CPU per request with the other's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from bench.gpu.server import access_records, embedding_requests
from bench.gpu.server import lone_query as timed_lone_query
from testkit import httpload
from testkit import server as testkit_server
from testkit.model_builder import build_model
from testkit.procs import children, cpu_us, switches
from testkit.server import AUTH, GUNICORN, TOKEN, Server, free_port
from testkit.workload import requests_of, texts, texts_of_words

ROOT = Path(__file__).resolve().parent.parent
QUERY = "where do rivers meet the sea"  # five words, dense only
ALL_KINDS = {"return_dense": True, "return_sparse": True, "return_colbert": True, "encoding_format": "base64"}


class BareForward:
    """The lone query's reference: a bare transformers forward of the same text, with transformers'
    and torch's defaults (what a user of the library gets)."""

    def __init__(self, model: Path, text: str, dtype: str = "bfloat16") -> None:
        # Imported here, not at the top: testkit.httpload's load processes import this module
        # (spawn imports the parent's main), and torch would cost each 2 s of CPU as it starts.
        import torch
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model))
        self.model = AutoModel.from_pretrained(str(model), dtype=getattr(torch, dtype), add_pooling_layer=False)
        self.model.eval()
        self.inputs = tokenizer([text], return_tensors="pt")
        self.tokens = int(self.inputs["input_ids"].shape[1])
        self.times(3)  # the first passes pay for allocations

    def times(self, count: int) -> list[float]:
        import torch

        out = []
        with torch.inference_mode():
            for _ in range(count):
                started = time.perf_counter()
                self.model(**self.inputs)
                out.append(time.perf_counter() - started)
        return out


def lone_query(server: Server, bare: BareForward, rounds: int = 6, round_s: float = 1.5) -> dict:
    """The server's lone query and the bare forward of the same text, timed in turns."""
    work = embedding_requests(server, [{"input": QUERY, "return_sparse": False, "return_colbert": False}])
    served: list[float] = []
    reference: list[float] = []
    for _ in range(rounds):
        served += timed_lone_query(server, work, round_s)[0].latencies
        reference += bare.times(10)
    return {"tokens": bare.tokens, "end_to_end_p50_ms": _ms(statistics.median(served)),
            "end_to_end_p99_ms": _ms(httpload.percentile(served, 99)),
            "bare_forward_p50_ms": _ms(statistics.median(reference))}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


BULK_WORDS = (150, 400)  # of each bulk text: low, high (``--words``)


def bulk_bodies(words: tuple[int, int] = BULK_WORDS) -> list[dict]:
    documents = texts_of_words(64, *words, seed=3)
    return [{"input": documents[i : i + 8], **ALL_KINDS} for i in range(0, len(documents), 8)]


def closed_loop(port: int, work: list[httpload.Request], clients: int, seconds: float) -> dict:
    """``clients`` sending the next of ``work`` as soon as their last answer came, for ``seconds``."""
    return httpload.run("127.0.0.1", port, work, clients, 1, seconds, drain=True).figures("tokens")


def bulk_alone(server: Server, seconds: float, words: tuple[int, int] = BULK_WORDS) -> dict:
    work = embedding_requests(server, bulk_bodies(words))
    closed_loop(server.port, work, 4, min(20.0, seconds / 3))  # warm-up, and the rate
    return closed_loop(server.port, work, 4, seconds)


LANES_QUERY_ID = "lanes-query"  # the query's X-Request-ID beside bulk: its lines in the access log


def bulk_with_queries(server: Server, seconds: float, words: tuple[int, int] = BULK_WORDS) -> dict:
    """The bulk load, and a query every 1.5 s from the moment the bulk load runs."""
    result: dict = {}
    work = embedding_requests(server, bulk_bodies(words))
    query = embedding_requests(server, [{"input": QUERY, "return_sparse": False, "return_colbert": False}],
                               LANES_QUERY_ID)
    bulk = threading.Thread(target=lambda: result.update(bulk=closed_loop(server.port, work, 4, seconds)))
    bulk.start()
    result["queries"] = httpload.run("127.0.0.1", server.port, query, 1, 1, seconds - 3, drain=True,
                                     pace_s=1.5).figures("tokens")
    bulk.join()
    return result


def mixed_all_kinds(server: Server) -> dict:
    bodies = [{"input": batch, "max_length": 512, **ALL_KINDS} for batch in requests_of(texts(96), 32)]
    work = embedding_requests(server, bodies)
    httpload.run("127.0.0.1", server.port, work[:4], 8, 1, once=True)  # warm-up
    return httpload.run("127.0.0.1", server.port, work, 8, 1, once=True).figures("tokens")


def tiny_clients(url: str, port: int, seconds: int, workdir: Path) -> dict:
    body = {"input": "what is the capital of France?", "return_sparse": False, "return_colbert": False}
    httpload.wrk(url, TOKEN, body, 16, 3, workdir)  # warm-up
    figures = {"wrk": httpload.wrk(url, TOKEN, body, 16, seconds, workdir)}
    work = [httpload.Request(httpload.post("/v1/embeddings", json.dumps(body).encode(), AUTH))]
    figures["python"] = httpload.run("127.0.0.1", port, work, 16, 2, seconds, warmup_s=1.0).figures()
    return figures


def bare_falcon(seconds: int, workdir: Path) -> dict:
    """testkit/bare_app.py under the server's gunicorn settings (2 workers of 32 threads)."""
    port = free_port()
    # -c /dev/null: not the server's gunicorn.conf.py, which would start engines.
    process = subprocess.Popen([str(GUNICORN), "-c", "/dev/null", "-w", "2", "-k", "gthread", "--threads", "32",
                                "-b", f"127.0.0.1:{port}", "--log-level", "warning", "testkit.bare_app:app"],
                               cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        httpload.wait_listening(port)
        return tiny_clients(f"http://127.0.0.1:{port}", port, seconds, workdir)
    finally:
        process.terminate()
        process.wait(30)


_BUFFERED = "embsvc.master.buffered_worker.BufferedThreadWorker"
_GTHREAD = "gthread"


class Target:
    """One server of ``--host-cost``: a gunicorn master whose children are its web workers and,
    for the real server, its engine (a spawned process)."""

    def __init__(self, name: str, port: int, master: int, stop: Callable[[], object]) -> None:
        self.name, self.port, self.master, self.stop = name, port, master, stop

    def counters(self) -> dict[str, float]:
        """So far, by role (engine; web: its workers summed; master): CPU time (µs) and context
        switches (each a thread's sleep or preemption: the wake-ups a request costs)."""
        roles = {"engine_us": 0.0, "web_us": 0.0, "master_us": cpu_us(self.master), "engine_switches": 0.0,
                 "web_switches": 0.0}
        for child in children(self.master):
            if "resource_tracker" in child.cmdline:
                continue
            role = "engine" if "spawn_main" in child.cmdline else "web"
            roles[f"{role}_us"] += cpu_us(child.pid)
            roles[f"{role}_switches"] += switches(child.pid)
        return roles


def _bare_target(name: str, worker_class: str) -> Target:
    """testkit/bare_app.py under the server's gunicorn settings (2 workers of 32 threads, keep-alive 5)."""
    port = free_port()
    # -c /dev/null: not the server's gunicorn.conf.py, which would start engines.
    process = subprocess.Popen([str(GUNICORN), "-c", "/dev/null", "-w", "2", "-k", worker_class, "--threads", "32",
                                "--keep-alive", "5", "-b", f"127.0.0.1:{port}", "--log-level", "warning",
                                "testkit.bare_app:app"], cwd=ROOT, stderr=subprocess.DEVNULL)
    httpload.wait_listening(port)

    def stop() -> None:
        process.terminate()
        process.wait(30)
    return Target(name, port, process.pid, stop)


def _server_target(name: str, model: Path, workdir: Path, tree: Path = ROOT, **env: str) -> Target:
    """The server of the checkout ``tree`` (its working directory and import path)."""
    testkit_server.ROOT = tree
    try:
        # DTYPE=auto, the default: on a CPU with bf16, the native bfloat16 kernels, whose pass of one short
        # text on the tiny model costs less than float32's (340 against 397 µs of CPU in process).
        server = Server(model, workdir / f"{name}.log", API_TOKEN=TOKEN, DTYPE="auto", MAX_QUEUE_SIZE="1000",
                        PYTHONPATH=str(tree), **env).start()
    finally:
        testkit_server.ROOT = ROOT
    assert server.process is not None
    return Target(name, server.port, server.process.pid, server.stop)


def _short_requests(count: int) -> list[httpload.Request]:
    body = {"input": "what is the capital of France?", "return_sparse": False, "return_colbert": False}
    return [httpload.Request(httpload.post("/v1/embeddings", json.dumps(body).encode(), AUTH))] * count


def host_turn(target: Target, count: int) -> dict[str, float]:
    """``count`` short requests from 16 connections: req/s, errors, and per request by role: µs of CPU
    and context switches."""
    before = target.counters()
    figures = httpload.run("127.0.0.1", target.port, _short_requests(count), 16, 2, once=True).figures()
    after = target.counters()
    answered = max(1, figures["requests"])
    per_request = {key: round((after[key] - before[key]) / answered, 1) for key in before}
    return {"requests_per_s": figures["requests_per_s"], "errors": figures["errors"], **per_request}


def host_cost(turns: int, count: int, other: Path | None = None) -> dict:
    """``other``: another checkout, whose server takes the gthread server's and the buffered bare app's turns."""
    tiny = build_model(ROOT / "models" / "bge-m3-tiny", "tiny")
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        targets: list[Target] = []
        try:
            targets.append(_server_target("server", tiny, Path(tmp)))
            if other is not None:
                targets.append(_server_target("other", tiny, Path(tmp), other.resolve()))
            else:
                targets.append(_server_target("server_gthread", tiny, Path(tmp), GUNICORN_CMD_ARGS=f"-k {_GTHREAD}"))
            targets.append(_bare_target("bare", _GTHREAD))
            if other is None:
                targets.append(_bare_target("bare_buffered", _BUFFERED))
            for target in targets:
                host_turn(target, min(count, 1000))  # warm-up: threads, caches, the engine's first passes
            for turn in range(turns):
                # Each turn in a rotated order (and reversed every other turn): drift falls on all alike.
                order = targets[turn % len(targets):] + targets[:turn % len(targets)]
                for target in order[::-1] if turn % 2 else order:
                    figures = host_turn(target, count)
                    results.setdefault(target.name, []).append(figures)
                    print(f"turn {turn} {target.name}: {figures}", flush=True)
        finally:
            for target in targets:
                target.stop()
    return host_summary(results)


def host_summary(results: dict[str, list[dict[str, float]]]) -> dict:
    medians = {name: {key: statistics.median(turn[key] for turn in turns) for key in turns[0]}
               for name, turns in results.items()}
    bare = medians["bare"]["requests_per_s"]
    if "other" in medians:
        server, other = medians["server"], medians["other"]
        return {"medians": medians, "ratios": {
            "server_vs_bare": ratio(server["requests_per_s"], bare),
            "other_vs_bare": ratio(other["requests_per_s"], bare),
            "engine_us_server_vs_other": ratio(server["engine_us"], other["engine_us"]),
            "web_us_server_vs_other": ratio(server["web_us"], other["web_us"]),
        }}
    return {"medians": medians, "ratios": {
        "server_vs_bare": ratio(medians["server"]["requests_per_s"], bare),
        "server_gthread_vs_bare": ratio(medians["server_gthread"]["requests_per_s"], bare),
        "server_web_us_buffered_vs_gthread": ratio(medians["server"]["web_us"], medians["server_gthread"]["web_us"]),
        "bare_web_us_buffered_vs_gthread": ratio(medians["bare_buffered"]["web_us"], medians["bare"]["web_us"]),
    }}


def bare_forward_alone(model: Path, text: str, repeats: int = 30) -> None:
    import torch

    bare = BareForward(model, text)
    p50 = statistics.median(bare.times(repeats))
    print(json.dumps({"tokens": bare.tokens, "threads": torch.get_num_threads(), "p50_ms": _ms(p50)}))


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120, help="of each bulk run (its last requests finish after)")
    parser.add_argument("--tiny-seconds", type=int, default=15)
    parser.add_argument("--host-cost", action="store_true", help="only the CPU per short request (see above)")
    parser.add_argument("--turns", type=int, default=3, help="of --host-cost, for each server")
    parser.add_argument("--requests", type=int, default=4000, help="of each --host-cost turn")
    parser.add_argument("--other", type=Path, help="of --host-cost: another checkout's server beside this one's")
    parser.add_argument("--bare-forward", nargs=2, metavar=("MODEL_FOLDER", "TEXT"),
                        help="only time the bare forward of TEXT (30 times: its p50)")
    parser.add_argument("--lanes", type=int, metavar="RUNS",
                        help="only the lone query, then RUNS times bulk alone and bulk with the queries")
    parser.add_argument("--words", type=int, nargs=2, default=BULK_WORDS, help="of each bulk text: low high")
    args = parser.parse_args()
    if args.lanes:
        print(json.dumps(lanes_runs(args.lanes, args.seconds, tuple(args.words))))
        return
    if args.host_cost:
        print(json.dumps(host_cost(args.turns, args.requests, args.other)))
        return
    if args.bare_forward:
        bare_forward_alone(Path(args.bare_forward[0]), args.bare_forward[1])
        return
    full = build_model(ROOT / "models" / "bge-m3-full", "full")
    tiny = build_model(ROOT / "models" / "bge-m3-tiny", "tiny")
    report: dict = {}
    bare = BareForward(full, QUERY)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = full_server(full, workdir)
        try:
            report["dtype"] = requests.get(f"{server.url}/health/detailed", timeout=10,
                                           headers={"Authorization": f"Bearer {TOKEN}"}).json()["model"]["dtype"]
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
            report["tiny_server"] = tiny_clients(server.url, server.port, args.tiny_seconds, workdir)
        finally:
            server.stop()
        report["tiny_bare_falcon"] = bare_falcon(args.tiny_seconds, workdir)
    report["ratios"] = ratios(report)
    print(json.dumps(report))


def full_server(model: Path, workdir: Path) -> Server:
    """The server on the full-size model, DTYPE=auto; a bulk request of eight long texts takes
    tens of seconds on a CPU: none may time out."""
    return Server(model, workdir / "full.log", API_TOKEN=TOKEN, DTYPE="auto", MAX_QUEUE_SIZE="1000", LOG_FORMAT="json",
                  REQUEST_TIMEOUT_S="900").start(timeout=600)


def lanes_runs(runs: int, seconds: float, words: tuple[int, int]) -> dict:
    """The lone query (timed in turns with the bare forward), then ``runs`` times bulk alone and
    bulk with a query every 1.5 s: per run, the slowest query against the lone p50 and the bulk
    rate kept; the full-size model, DTYPE=auto, default settings."""
    full = build_model(ROOT / "models" / "bge-m3-full", "full")
    report: dict = {"words": words, "seconds": seconds, "runs": []}
    bare = BareForward(full, QUERY)
    with tempfile.TemporaryDirectory() as tmp:
        server = full_server(full, Path(tmp))
        try:
            report["lone_query"] = lone = lone_query(server, bare)
            for _ in range(runs):
                alone = bulk_alone(server, seconds, words)
                logged = server.log_path.stat().st_size
                beside = bulk_with_queries(server, seconds, words)
                queries = beside["queries"]
                run = {**slowest_query(server.log_path, logged),
                       "bulk_alone_tokens_per_s": alone["tokens_per_s"],
                       "bulk_with_queries_tokens_per_s": beside["bulk"]["tokens_per_s"],
                       "queries": queries["requests"], "query_p50_ms": queries["p50_ms"],
                       "query_max_ms": queries["max_ms"],
                       "query_max_vs_lone_p50": ratio(queries["max_ms"], lone["end_to_end_p50_ms"]),
                       "bulk_kept": ratio(beside["bulk"]["tokens_per_s"], alone["tokens_per_s"])}
                print(json.dumps(run), flush=True)
                report["runs"].append(run)
        finally:
            server.stop()
    return report


def slowest_query(log_path: Path, start: int) -> dict:
    """Where the slowest query's time went: its web worker's time (gunicorn's), the engine's part
    and that part's queue and passes (Server-Timing), from the access log after byte ``start``."""
    records = access_records(log_path, start, LANES_QUERY_ID)
    if not records:
        return {}
    slowest = max(records, key=lambda r: r["duration_ms"])
    return {"slowest_query_in_web_worker_ms": slowest["duration_ms"], "its_engine_ms": slowest.get("engine_ms"),
            "its_engine_queue_ms": slowest.get("queue_ms"), "its_engine_passes_ms": slowest.get("passes_ms")}


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
