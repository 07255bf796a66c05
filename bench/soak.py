"""Soak test: many clients for a long while behind real nginx, on the tiny model.

    .venv/bin/python -m bench.soak                      (64 clients, 10 s warm-up, 60 s)
    .venv/bin/python -m bench.soak --clients 16 --seconds 10 --warmup 3

Starts the server as the tests do (gunicorn, 2 web workers, one CPU engine on the
tiny model) and Debian's nginx in front of it with deploy/nginx/nginx.conf
(rendered by deploy/nginx/render.py; nginx runs as an ordinary user: testkit/nginx.py). Each client
sends a mix of requests (testkit/traffic.py: one text or a batch, every kind, float and base64, long
inputs cut by max_length, rerank, tokenize, /health and /stats) and some bad ones
on purpose (they must get their 4xx). More clients than MAX_QUEUE_SIZE overload the
server on purpose: those requests must get 503 overloaded_error, and the client
waits Retry-After before its next one, as a well-behaved client does.

Prints the requests served, the answers by status, p50 and p99 latency, and the
resident memory of every process (gunicorn master, web workers, engine, resource
tracker, nginx) after the warm-up and at the end, both measured idle (the clients
are held between two requests for it), with the peak under load beside them.
Exits 1 when any answer was an error other than the deliberate ones, or a process
grew by more than 10 % between the two idle measurements.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testkit import nginx as nginx_proxy  # noqa: E402 - after the path is set for "python bench/soak.py"
from testkit import procs  # noqa: E402
from testkit.model_builder import build_model  # noqa: E402
from testkit.server import Server  # noqa: E402
from testkit.traffic import Load, Tally, client, percentile, processes  # noqa: E402

TOKEN = "soak-test-token"
GROWTH_LIMIT = 0.10
def start_nginx(prefix: Path, backend_port: int) -> tuple[subprocess.Popen[bytes], int]:
    return nginx_proxy.start(prefix, [f"127.0.0.1:{backend_port}"])


# -- the run ------------------------------------------------------------------------------


def run(clients: int, seconds: float, warmup: float, workdir: Path, rss_every: float = 0) -> list[str]:
    """Run the soak and print its report; returns what failed (nothing: a pass)."""
    model = build_model(ROOT / "models" / "bge-m3-tiny", "tiny")
    server = Server(model, workdir / "server.log", API_TOKEN=TOKEN, LOG_LEVEL="WARNING").start()
    nginx, port = None, 0
    try:
        nginx, port = start_nginx(workdir / "nginx", server.port)
        tally, load = Tally(), Load()
        threads = [threading.Thread(target=client, args=(port, seed, tally, load, TOKEN), daemon=True)
                   for seed in range(clients)]
        for thread in threads:
            thread.start()
        load.gate.set()
        time.sleep(warmup)
        # Memory is compared idle, after the warm-up and at the end: under load it
        # swings by the size of the batch in hand (hundreds of MiB for long inputs).
        load.quiesce()
        roles = processes(server, nginx.pid)
        start_rss = {pid: procs.rss_mb(pid) for pid in roles}
        peak = dict(start_rss)
        load.gate.set()
        tally.measuring = True
        started = last_print = time.monotonic()
        while (now := time.monotonic()) < started + seconds:
            time.sleep(min(1.0, started + seconds - now))
            for pid in roles:
                peak[pid] = max(peak[pid], procs.rss_mb(pid))
            if rss_every and time.monotonic() - last_print >= rss_every:
                last_print = time.monotonic()
                print(f"rss at {last_print - started:5.0f} s:",
                      ", ".join(f"{roles[pid]} {procs.rss_mb(pid):.1f}" for pid in sorted(roles)), flush=True)
        tally.measuring = False
        elapsed = time.monotonic() - started
        load.quiesce()
        end_rss = {pid: procs.rss_mb(pid) for pid in roles}
        load.finish()
        for thread in threads:
            thread.join(140)
        gone = [pid for pid, role in processes(server, nginx.pid).items() if pid not in roles]
        return report(clients, seconds, warmup, elapsed, tally, roles, start_rss, end_rss, peak, gone)
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        server.stop()


def report(clients: int, seconds: float, warmup: float, elapsed: float, tally: Tally, roles: dict[int, str],
           start_rss: dict[int, float], end_rss: dict[int, float], peak: dict[int, float],
           new_processes: list[int]) -> list[str]:
    served = sum(tally.answers.values())
    print(f"soak: {clients} clients for {seconds:.0f} s after a {warmup:.0f} s warm-up, through nginx to "
          "gunicorn (2 web workers) and one CPU engine, tiny model")
    print(f"requests served: {served} ({served / elapsed:.1f}/s)")
    print("answers by status:")
    for (status, label), count in sorted(tally.answers.items()):
        note = {200: "", 400: "  (bad on purpose)"}.get(status, "")
        if status == 503 and label == "overloaded_error":
            note = "  (deliberate overload: more clients than MAX_QUEUE_SIZE)"
        print(f"  {status or 'no answer'} {label}: {count}{note}")
    print(f"errors other than the deliberate ones: {sum(tally.errors.values())}")
    for what, count in tally.errors.most_common():
        print(f"  {what}: {count}")
    print(f"latency of the 200s: p50 {percentile(tally.latencies, 50) * 1000:.1f} ms, "
          f"p99 {percentile(tally.latencies, 99) * 1000:.1f} ms")
    print("resident memory, MiB, idle   pid  after warm-up     end   growth   (peak under load)")
    grown = []
    for pid, role in sorted(roles.items(), key=lambda item: item[1]):
        before, after = start_rss[pid], end_rss[pid]
        growth = (after - before) / before if before else 0.0
        if growth > GROWTH_LIMIT:
            grown.append(f"{role} {pid}")
        print(f"  {role:<20} {pid:>8} {before:>14.1f} {after:>7.1f} {growth:>+8.1%}   ({peak[pid]:.1f})")
    if new_processes:
        print(f"processes started during the run (a restart?): {new_processes}")
    failures = []
    if tally.errors:
        failures.append("errors other than the deliberate ones")
    if grown:
        failures.append(f"grew by more than {GROWTH_LIMIT:.0%}: {', '.join(grown)}")
    if new_processes:
        failures.append("a process was restarted")
    print("verdict:", "PASS" if not failures else "FAIL: " + "; ".join(failures))
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--rss-every", type=float, default=0, help="also print every process's RSS this often")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="embsvc-soak-") as workdir:
        os.chmod(workdir, 0o755)  # nginx, as another user, walks into it
        sys.exit(1 if run(args.clients, args.seconds, args.warmup, Path(workdir), args.rss_every) else 0)


if __name__ == "__main__":
    main()
