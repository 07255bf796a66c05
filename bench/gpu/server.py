"""The device check's HTTP part: the whole server (gunicorn, web workers, one engine) under
concurrent clients, then a bare Falcon app on the same gunicorn settings (the ceiling of the
load generator and gunicorn on this machine). Prints one JSON line.

    python -m bench.gpu.server --device cuda:0 --model FOLDER --work DIR [--quick]

Loads, each measured after a warm-up over a fixed window (testkit/httpload.py; the bulk
loads count every request sent in it, however late its answer):
  bulk_dense        64 texts of 200-500 tokens per request, dense only (JSON floats);
  bulk_all_kinds    the same with dense, sparse and ColBERT, base64 float16 payloads;
  short_queries     one text of 8-16 tokens per request, dense only (base64), 64+ connections;
  lone_query        the same from one connection: the latency of a query on an idle server
                    (``lone_query`` here times it for bench.run and bench.priority too);
  queries_under_bulk  the lone query's loop beside the bulk all-kinds load: the lanes on the
                    device (its p99 against the lone p50; target <= 2x), and where its time goes;
  queries_under_dense_bulk  the same beside the bulk dense load (answers a thousandth the size);
and where the time goes under the short queries: the engine's busy share (from /stats)
and the CPU the web workers and the engine used (from /proc). ``--only two_engines``: the
short and lone queries again with two engines on the one device.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import requests

from embsvc.config import default_workers
from testkit import httpload, procs
from testkit.server import AUTH, ROOT, TOKEN, Server, free_port, gunicorn_command

DENSE_ONLY = {"return_sparse": False, "return_colbert": False}
ALL_KINDS_HALF = {"return_dense": True, "return_sparse": True, "return_colbert": True, "encoding_format": "base64",
                  "embedding_dtype": "float16"}
TICKS = os.sysconf("SC_CLK_TCK")


class Plan:
    """Durations and client counts: the full check on a GPU, less with --quick or on a CPU."""

    def __init__(self, args: argparse.Namespace) -> None:
        gpu = args.device.startswith("cuda")
        scale = 0.4 if args.quick else 1.0
        # 15 s windows: the bulk rates moved 3% between 20 s windows of three runs on the H200,
        # and the check's 300 s then has room for the engine alone after the server.
        self.window_s, self.warmup_s = 15 * scale, 4 * scale
        self.short_window_s = 15 * scale
        self.lone_window_s = 6 * scale
        self.bulk_connections = 16 if gpu else 2
        self.short_connections = 64 if gpu else 16
        self.client_processes = 4 if gpu else 2
        self.gpu = gpu
        self.web_concurrency = self.workers(1)
        # On a CPU the server's default queue (50) would refuse 64 clients; a GPU's (512) takes them.
        self.env = {} if gpu else {"MAX_QUEUE_SIZE": "1000"}

    def workers(self, engines: int) -> int:
        """WEB_CONCURRENCY as the server's default sizes it for ``engines`` engines."""
        return default_workers(len(os.sched_getaffinity(0)), engines if self.gpu else 0)


def bodies(texts: list[str], counts: list[int], per_request: int, extra: dict[str, Any]) -> list[httpload.Request]:
    out = []
    for start in range(0, len(texts) - per_request + 1, per_request):
        body = orjson.dumps({"input": texts[start:start + per_request], **extra})
        out.append(httpload.Request(httpload.post("/v1/embeddings", body, AUTH),
                                    sum(counts[start:start + per_request])))
    return out


QUERY_ID = "check-query"  # the queries' X-Request-ID: their lines in the access log


def queries(texts: list[str], counts: list[int]) -> list[httpload.Request]:
    extra, headers = {**DENSE_ONLY, "encoding_format": "base64"}, {**AUTH, "X-Request-ID": QUERY_ID}
    return [httpload.Request(httpload.post("/v1/embeddings", orjson.dumps({"input": text, **extra}), headers), n)
            for text, n in zip(texts, counts, strict=True)]


def embedding_requests(server: Server, bodies: list[dict[str, Any]],
                       request_id: str | None = None) -> list[httpload.Request]:
    """``/v1/embeddings`` requests of ``bodies``, each weighed by its tokens; ``request_id``:
    their X-Request-ID (to find their lines in the access log)."""
    headers = {**server.auth, **({"X-Request-ID": request_id} if request_id else {})}
    return [httpload.Request(httpload.post("/v1/embeddings", orjson.dumps(body), headers), server.tokens(body))
            for body in bodies]


def load(port: int, work: list[httpload.Request], connections: int, processes: int, seconds: float,
         warmup_s: float, drain: bool = False) -> dict[str, float]:
    return httpload.run("127.0.0.1", port, work, connections, processes, seconds, warmup_s,
                        drain=drain).figures("tokens")


def engine_busy_s(batching: dict[str, Any]) -> float:
    """The engine's busy seconds so far, from /stats' batching figures."""
    return float(batching["average_processing_time"] * batching["batches"])


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def where_time_goes(server: Server, run: Callable[[], dict[str, float]], machine: bool = False) -> dict[str, Any]:
    """``run``'s figures, with the engine's busy share, its mean time for an interactive request
    (arrival to answer), and the cores the web workers and engine used (with several engines,
    their sums); ``machine``: the cores the whole machine used too."""
    workers, engines = sorted(procs.worker_pids(server)), procs.engine_pids(server)
    stats_before = server.stats()
    before = stats_before["batching"]
    cpu_before = [cpu_seconds(p) for p in (*workers, *engines)]
    machine_before = machine_busy_s()
    started = time.monotonic()
    figures: dict[str, Any] = run()
    wall = time.monotonic() - started
    machine_after = machine_busy_s()
    stats_after = server.stats()
    after = stats_after["batching"]
    cpu = [cpu_seconds(p) - c for p, c in zip((*workers, *engines), cpu_before, strict=True)]
    batches = after["batches"] - before["batches"]
    busy = engine_busy_s(after) - engine_busy_s(before)
    figures["engine_busy_share"] = round(busy / wall, 3)
    figures["engine_batches_per_s"] = round(batches / wall, 1)
    figures["requests_per_batch"] = round((after["processed_requests"] - before["processed_requests"])
                                          / max(1, batches), 2)
    figures["web_workers_cores"] = round(sum(cpu[:len(workers)]) / wall, 2)
    figures["engine_cores"] = round(sum(cpu[len(workers):]) / wall, 2)
    if machine:
        figures["machine_busy_cores"] = round((machine_after - machine_before) / wall, 2)
    figures["engine_interactive_ms"] = lane_mean_ms(stats_before["lanes"]["interactive"],
                                                    stats_after["lanes"]["interactive"])
    return figures


def lane_mean_ms(before: dict[str, float], after: dict[str, float]) -> dict[str, float] | None:
    """A lane's mean wait and latency in the engine (ms) over the requests answered between two
    readings of /stats (which gives the means since the engine started)."""
    count = after["requests"] - before["requests"]
    if count <= 0:
        return None
    return {key.removeprefix("average_").removesuffix("_s"): round(
        1000 * (after[key] * after["requests"] - before[key] * before["requests"]) / count, 2)
        for key in ("average_wait_s", "average_latency_s")}


def machine_busy_s() -> float:
    """The CPU seconds the whole machine has been busy (every core; idle and iowait left out)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS


def lone_query(server: Server, work: list[httpload.Request], seconds: float,
               warmup_s: float = 0.5) -> tuple[httpload.Result, float]:
    """Queries from one connection, each sent when the last is answered, for ``seconds``: what a
    query takes on an idle server; and the engine's milliseconds per batch meanwhile."""
    before = server.stats()["batching"]
    result = httpload.run("127.0.0.1", server.port, work, 1, 1, seconds, warmup_s)
    after = server.stats()["batching"]
    batches = after["batches"] - before["batches"]
    return result, round(1000 * (engine_busy_s(after) - engine_busy_s(before)) / max(1, batches), 2)


def lone_query_figures(server: Server, work: list[httpload.Request], seconds: float) -> dict[str, float]:
    result, engine_ms = lone_query(server, work, seconds)
    return {**result.figures("tokens"), "engine_ms_per_batch": engine_ms}


def queries_under_bulk(server: Server, plan: Plan, bulk: list[httpload.Request], work: list[httpload.Request],
                       lone_p50_ms: float | None) -> dict[str, Any]:
    """The lone query's loop (one connection, each query sent when the last is answered) while
    the bulk load runs beside it: whether the lanes hold on the device (a query's p99 against
    the lone query's p50), and the bulk rate meanwhile. Where a query's time goes: the engine's
    mean for an interactive request, the web workers' own times for the queries (from the
    access log), and the cores each side and the whole machine used."""
    beside: list[dict[str, float]] = []
    window = plan.window_s
    thread = threading.Thread(target=lambda: beside.append(load(
        server.port, bulk, plan.bulk_connections, plan.client_processes, window + 1, plan.warmup_s)))
    thread.start()
    time.sleep(plan.warmup_s)  # the bulk passes at their size before the first query
    logged = server.log_path.stat().st_size
    figures: dict[str, Any] = where_time_goes(server, lambda: httpload.run(
        "127.0.0.1", server.port, work, 1, 1, window - 1, 0.5).figures("tokens"), machine=True)
    thread.join()
    queries = {key: figures[key] for key in ("requests", "errors", "p50_ms", "p99_ms", "max_ms")}
    return {"queries": queries, "bulk_tokens_per_s": beside[0]["tokens_per_s"] if beside else None,
            "p99_vs_lone_p50": round(queries["p99_ms"] / lone_p50_ms, 2) if lone_p50_ms else None,
            "queries_in_the_server": query_durations(server.log_path, logged),
            **{key: figures[key] for key in ("engine_interactive_ms", "web_workers_cores", "engine_cores",
                                             "machine_busy_cores")}}


def access_records(log_path: Path, start: int, request_id: str) -> list[dict[str, Any]]:
    """The access log's records of the requests with ``request_id`` after byte ``start`` of the
    server's JSON log."""
    with open(log_path, "rb") as log:
        log.seek(start)
        return [orjson.loads(line) for line in log if request_id.encode() in line and b'"duration_ms"' in line]


def query_durations(log_path: Path, start: int) -> dict[str, Any] | None:
    """The queries (``QUERY_ID``) logged after byte ``start``: their times in the web workers
    (gunicorn's, from reading the request to the last byte sent) and the engine's part of them
    (``engine_ms``, the app's Server-Timing) and its parts in the engine (``queue_ms``,
    ``passes_ms``), p50 / p99 / max."""
    records = access_records(log_path, start, QUERY_ID)
    if not records:
        return None
    return {"requests": len(records), "web_workers_ms": spread([r["duration_ms"] for r in records]),
            **{key: spread([r.get(key) or 0.0 for r in records]) for key in ("engine_ms", "queue_ms", "passes_ms")}}


def spread(values: list[float]) -> dict[str, float]:
    return {"p50": httpload.percentile(values, 50), "p99": httpload.percentile(values, 99), "max": max(values)}


def gpu_memory_mib() -> dict[str, int]:
    """Memory each process holds on the GPU, as nvidia-smi reports it (empty where it cannot)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = (line.split(",") for line in out.splitlines() if line.strip())
    return {pid.strip(): int(used) for pid, used in rows}


OWN_SHM_SIZE = "16g"


def own_dev_shm() -> tuple[str | None, str]:
    """A /dev/shm of its own for the server where the machine's is small (a VM's or a container's
    default can be 64 MiB): bulk requests with ColBERT rows need about 90 MB each in flight.
    Its size (None: the machine's /dev/shm) and, for the JSON, which and why. Where a tmpfs
    cannot be mounted, the machine's, however small: a figure on it beats none."""
    try:
        gib = shutil.disk_usage("/dev/shm").total / 2**30
    except OSError as exc:
        return None, f"the machine's /dev/shm, unread ({exc})"
    machines = f"the machine's /dev/shm ({gib:.1f} GiB)"
    if gib >= 8:
        return None, machines
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return None, f"{machines}: small, but no root or no unshare to mount one of its own"
    probe = ["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "-o",
             f"size={OWN_SHM_SIZE},mode=1777", "tmpfs", "/dev/shm"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{machines}: mounting one of its own failed ({exc})"
    if done.returncode:
        return None, f"{machines}: mounting one of its own was refused ({done.stderr.strip()[-300:]})"
    return OWN_SHM_SIZE, f"a tmpfs of its own ({OWN_SHM_SIZE}; the machine's: {gib:.1f} GiB)"


def serve(args: argparse.Namespace, plan: Plan, work: Path, engines: int = 1) -> tuple[Server, str]:
    """The server started, and which /dev/shm it has (its own where it can, else the machine's)."""
    shm_size, dev_shm = own_dev_shm()
    env = {"API_TOKEN": TOKEN, "DEVICE": ",".join([args.device] * engines), "DTYPE": "auto",
           "WEB_CONCURRENCY": str(plan.workers(engines)), "LOG_FORMAT": "json", **plan.env}
    if shm_size is not None:
        try:
            return Server(Path(args.model), work / "server.log", shm_size=shm_size, **env).start(timeout=300), dev_shm
        except (RuntimeError, TimeoutError) as exc:
            dev_shm = f"the machine's /dev/shm: the server did not start on its own ({str(exc)[:300]})"
    return Server(Path(args.model), work / "server.log", **env).start(timeout=300), dev_shm


def measure_server(args: argparse.Namespace, plan: Plan, work: Path, texts: dict[str, Any]) -> dict[str, Any]:
    bulk, short = texts["bulk"], texts["queries"]
    dense = bodies(bulk["texts"], bulk["tokens"], 64, DENSE_ONLY)
    everything = bodies(bulk["texts"], bulk["tokens"], 64, ALL_KINDS_HALF)
    asks = queries(short["texts"], short["tokens"])
    server, dev_shm = serve(args, plan, work)
    out: dict[str, Any] = {"web_concurrency": plan.web_concurrency, "dev_shm": dev_shm,
                           "own_dev_shm": server.shm_size}
    clients = (plan.bulk_connections, plan.client_processes, plan.window_s, plan.warmup_s)
    steps: dict[str, Callable[[], Any]] = {
        "health": lambda: requests.get(f"{server.url}/health", timeout=10).json(),
        "tokens_counted_alike": lambda: _usage(server, dense[0]) == dense[0].weight,
        # A bulk request sent in the window counts, however late its answer: a window that drops
        # the requests in flight at its end undercounts by as many seconds as one takes.
        "bulk_dense": lambda: load(server.port, dense, *clients, drain=True),
        "bulk_all_kinds_float16": lambda: load(server.port, everything, *clients, drain=True),
        "gpu_memory_mib": gpu_memory_mib,
        "short_queries": lambda: where_time_goes(server, lambda: load(
            server.port, asks, plan.short_connections, plan.client_processes, plan.short_window_s, plan.warmup_s)),
        "lone_query": lambda: lone_query_figures(server, asks, plan.lone_window_s),
        # Bulk of all three kinds, as an indexer sends it, and one query at a time beside it.
        "queries_under_bulk": lambda: queries_under_bulk(server, plan, everything, asks,
                                                         out.get("lone_query", {}).get("p50_ms")),
        # The same beside bulk of dense vectors only: what the bulk answers' size adds.
        "queries_under_dense_bulk": lambda: queries_under_bulk(server, plan, dense, asks,
                                                               out.get("lone_query", {}).get("p50_ms")),
        "stats_config": lambda: server.stats()["config"],
        "web_worker_rss_mb": lambda: [procs.rss_mb(p) for p in sorted(procs.worker_pids(server))],
    }
    try:
        for name, step in steps.items():
            try:
                out[name] = step()
            except Exception as exc:  # noqa: BLE001 - one load's failure must leave the others' figures
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        server.stop()
    return out


def measure_two_engines(args: argparse.Namespace, plan: Plan, work: Path, texts: dict[str, Any]) -> dict[str, Any]:
    """The short queries again with two engines on the one device (``DEVICE=cuda:0,cuda:0``):
    whether a second process's Python beside the first's kernels pays where one engine's host
    side is the limit."""
    asks = queries(texts["queries"]["texts"], texts["queries"]["tokens"])
    server, dev_shm = serve(args, plan, work, engines=2)
    try:
        short = where_time_goes(server, lambda: load(server.port, asks, plan.short_connections,
                                                     plan.client_processes, plan.short_window_s, plan.warmup_s))
        return {"web_concurrency": plan.workers(2), "dev_shm": dev_shm, "short_queries": short,
                "lone_query": lone_query_figures(server, asks, plan.lone_window_s),
                "gpu_memory_mib": gpu_memory_mib()}
    finally:
        server.stop()


def _usage(server: Server, request: httpload.Request) -> int:
    body = request.data.split(b"\r\n\r\n", 1)[1]
    answer = requests.post(f"{server.url}/v1/embeddings", data=body, timeout=300,
                           headers={**AUTH, "Content-Type": "application/json"})
    answer.raise_for_status()
    return int(answer.json()["usage"]["total_tokens"])


def measure_bare_app(plan: Plan, work: Path, texts: dict[str, Any]) -> dict[str, Any]:
    """The same short-query load on a bare Falcon app with the server's gunicorn settings."""
    port = free_port()
    empty = work / "bare_app.conf.py"  # not the server's gunicorn.conf.py, which gunicorn reads by default
    empty.write_text("")
    command = [*gunicorn_command(), "-c", str(empty), "-b", f"127.0.0.1:{port}", "-w", str(plan.web_concurrency),
               "-k", "gthread", "--threads", "32", "--keep-alive", "5", "testkit.bare_app:app"]
    with open(work / "bare_app.log", "ab") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        httpload.wait_listening(port)
        asks = queries(texts["queries"]["texts"], texts["queries"]["tokens"])
        return load(port, asks, plan.short_connections, plan.client_processes, plan.short_window_s, plan.warmup_s)
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--model", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("server", "bare_app", "two_engines"), help="one part")
    args = parser.parse_args()
    plan, work = Plan(args), Path(args.work)
    texts = json.loads((work / "texts.json").read_text())
    started = time.perf_counter()
    out: dict[str, Any] = {}
    if args.only in (None, "server"):
        out["server"] = measure_server(args, plan, work, texts)
    if args.only in (None, "bare_app"):
        out["bare_app_short_queries"] = measure_bare_app(plan, work, texts)
    if args.only == "two_engines":
        out["two_engines"] = measure_two_engines(args, plan, work, texts)
    print(json.dumps({**out, "part_seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
