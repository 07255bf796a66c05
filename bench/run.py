"""The benchmark: the server against FlagEmbedding in-process, in one run, on this machine.

    .venv/bin/python -m bench.run            (or: make bench)

Builds the full-size random bge-m3 (same compute as the real model) once, then
measures, each with the machine to itself:
  1. the machine's bfloat16 matrix-product peak (bench.gpu.parts peak, on the CPU);
  2. FlagEmbedding's BGEM3FlagModel.encode in-process, its CPU defaults (float32, batch 256:
     bench.gpu.parts flag);
  3. the server (DTYPE=auto, then float32): 8 concurrent clients, 1 to 8 multilingual texts
     per request, all three kinds; then dense only; then a lone short query;
     and one input of 8,192 tokens (time and memory);
  4. the server on the tiny model: one short text per request from 16 connections (wrk),
     for the per-request overhead;
  5. how close the bfloat16 vectors stay to the float32 ones (bench.gpu.parts precision);
and prints one JSON line of figures and ratios. Max length is 512 tokens on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.gpu.server import embedding_requests
from bench.gpu.server import lone_query as timed_lone_query
from gpu_pool.model.flops import flops_per_token
from testkit import httpload, procs
from testkit.model_builder import build_model
from testkit.server import TOKEN, Server
from testkit.workload import requests_of, texts

ROOT = Path(__file__).resolve().parent.parent
HIDDEN, LAYERS = 1024, 24
# The encoder's matrix-product FLOPs per token plus the ColBERT head's (2d²).
FLOPS_PER_TOKEN = flops_per_token(LAYERS, HIDDEN, 4 * HIDDEN) + 2 * HIDDEN**2
ALL_KINDS = {"return_dense": True, "return_sparse": True, "return_colbert": True}


def part(name: str, *args: str) -> dict:
    """A part of the device check (bench/gpu/parts.py) on the CPU, in a process of its own."""
    command = [sys.executable, "-m", "bench.gpu.parts", name, "--device", "cpu", *args]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def memory(server: Server) -> dict:
    engines = procs.engine_pids(server)
    return {"web_worker_rss_mb": [procs.rss_mb(p) for p in sorted(procs.worker_pids(server))],
            "engine_rss_mb": [procs.rss_mb(p) for p in engines],
            "processes_holding_the_model": sum(procs.maps_torch(p.pid) for p in procs.children(server.process.pid))}


def mixed(server: Server, bodies: list[dict], concurrency: int) -> dict:
    """Every body once from ``concurrency`` clients: tokens/s."""
    work = embedding_requests(server, bodies)
    httpload.run("127.0.0.1", server.port, work[:4], concurrency, 1, once=True)  # warm-up
    return httpload.run("127.0.0.1", server.port, work, concurrency, 1, once=True).figures("tokens")


def lone_query(server: Server, seconds: float) -> dict:
    work = embedding_requests(server, [{"input": "what is the capital of France?", "max_length": 512}])
    result, engine_ms = timed_lone_query(server, work, seconds, warmup_s=1.0)
    p50 = result.figures()["p50_ms"]
    return {"end_to_end_p50_ms": p50, "engine_forward_ms": engine_ms, "overhead_ms": round(p50 - engine_ms, 2)}


def long_input(server: Server, tokens: int = 8192) -> dict:
    """One input cut to ``tokens`` tokens, all three kinds: its time and the engine's memory."""
    engine = procs.engine_pid(server)
    text = " ".join(texts(400))  # well over 8,192 tokens
    body = {"input": text, "max_length": tokens, "encoding_format": "base64", **ALL_KINDS}
    before = procs.rss_mb(engine)
    started = time.perf_counter()
    response = requests.post(f"{server.url}/v1/embeddings", json=body, timeout=600,
                             headers={"Authorization": f"Bearer {TOKEN}"})
    response.raise_for_status()
    return {"tokens": response.json()["usage"]["total_tokens"], "seconds": round(time.perf_counter() - started, 2),
            "engine_rss_mb_before": before, "engine_rss_mb_after": procs.rss_mb(engine),
            "engine_peak_rss_mb": procs.rss_mb(engine, "VmHWM")}


def serve(model: Path, workdir: Path, dtype: str) -> Server:
    return Server(model, workdir / f"server-{dtype}.log", API_TOKEN=TOKEN, DTYPE=dtype,
                  MAX_QUEUE_SIZE="1000").start(timeout=600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=160, help="texts in the FlagEmbedding run")
    parser.add_argument("--requests", type=int, default=48, help="requests in each mixed server run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tiny-seconds", type=int, default=15)
    args = parser.parse_args()

    models = ROOT / "models"
    full = build_model(models / "bge-m3-full", "full")
    tiny = build_model(models / "bge-m3-tiny", "tiny")
    pool = texts(args.texts)
    bodies = [{"input": batch, "max_length": 512, "encoding_format": "base64", **ALL_KINDS}
              for batch in requests_of(pool, args.requests)]
    dense_bodies = [{**b, "return_sparse": False, "return_colbert": False} for b in bodies]
    report: dict = {"machine": {"cores": len(os.sched_getaffinity(0)), **part("peak")}}
    report["flagembedding_fp32"] = part("flag", "--model", str(full), "--texts", str(args.texts))

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for dtype in ("auto", "float32"):
            server = serve(full, workdir, dtype)
            try:
                run = {"dtype": requests.get(f"{server.url}/health/detailed", timeout=10,
                                             headers={"Authorization": f"Bearer {TOKEN}"}).json()["model"]["dtype"]}
                run["mixed_all_kinds"] = mixed(server, bodies, args.concurrency)
                if dtype == "auto":
                    run["dense_only"] = mixed(server, dense_bodies, args.concurrency)
                    run["lone_query"] = lone_query(server, 10)
                    run["long_input"] = long_input(server)
                    run["memory"] = memory(server)
                report[f"server_{dtype}"] = run
            finally:
                server.stop()
        server = Server(tiny, workdir / "server-tiny.log", API_TOKEN=TOKEN, MAX_QUEUE_SIZE="1000").start()
        try:
            body = {"input": "what is the capital of France?"}
            httpload.wrk(server.url, TOKEN, body, 16, 3, workdir)  # warm-up
            report["tiny_one_text_16_connections"] = httpload.wrk(server.url, TOKEN, body, 16, args.tiny_seconds,
                                                                  workdir)
            report["tiny_one_text_16_connections"]["memory"] = memory(server)
        finally:
            server.stop()

    report["bfloat16_vs_float32"] = part("precision", "--model", str(full), "--texts", "48")

    flag = report["flagembedding_fp32"]["all_kinds"]["tokens_per_s"]
    auto = report["server_auto"]["mixed_all_kinds"]["tokens_per_s"]
    fp32 = report["server_float32"]["mixed_all_kinds"]["tokens_per_s"]
    report["ratios"] = {
        "auto_vs_flagembedding": round(auto / flag, 2),
        "float32_vs_flagembedding": round(fp32 / flag, 2),
        "share_of_bf16_peak": round(auto * FLOPS_PER_TOKEN / 1e12 / report["machine"]["bfloat16_tflops"], 3),
    }
    report["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
