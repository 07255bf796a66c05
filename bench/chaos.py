"""Soaks: many clients through real nginx for a long while, with the server's processes killed
on a small /dev/shm (chaos), or left alone (``--soak``).

    .venv/bin/python -m bench.chaos                                   (64 clients, 5 min, 10 s warm-up)
    .venv/bin/python -m bench.chaos --clients 16 --seconds 30 --warmup 5     (faults scaled to the run)
    .venv/bin/python -m bench.chaos --soak                            (no faults: 64 clients, 60 s)
    .venv/bin/python -m bench.chaos --soak --clients 16 --seconds 10 --warmup 3

The server runs as the tests start it (gunicorn, 2 web workers, one CPU engine on the tiny
model) in a mount namespace whose /dev/shm is a 64 MiB tmpfs (Docker's default), behind
Debian's nginx with deploy/nginx/nginx.conf (testkit/nginx.py). The clients are the soak's
(testkit/traffic.py) with a share of long requests of all three kinds, which take the most
shared memory. After the warm-up a driver, for ``--seconds``:

- kills the engine with SIGKILL every 40 s (the master starts another),
- kills a random web worker with SIGKILL every 25 s (gunicorn starts another),
- sends the master SIGHUP once, half-way (new web workers, the same engine);

a shorter run scales both intervals (at least 6 s and 3 s). Then the clients are held, the
server is stopped, and one JSON line is printed: requests by status (and error type; nginx's
own 503 when a worker died with the request and nginx could not send it again), requests
that got no answer at all, p50/p99 of the 200s, the faults driven, engine restarts, requests
nginx sent again after a broken upstream connection, SIGBUS seen in the log, each process's
resident memory after the warm-up and at the end (both idle; killed processes have no end,
their replacements no start), and what was left in the namespace's /dev/shm after exit.

Exits 1 when a request got no answer, a process died of SIGBUS, anything was left in
/dev/shm, an answer was an error that no fault explains, or a process that lived through the
run (or the largest of a role) grew by more than 10 % (and 2 MiB). One loss is counted but explained: a
web worker killed while it writes an answer cuts it (the client reads a status line and part
of the body, ``unanswered_cut_by_a_worker_kill``); nginx has begun passing it on by then and
cannot send the request to another worker. At most one per worker kill.

``--soak`` drives no fault, sends the plain mix (no long all-kinds batches) and runs on the
machine's /dev/shm: then only the deliberate errors are explained (503 overloaded_error when
more clients than MAX_QUEUE_SIZE send at once, the 400s of the bad requests), and a restarted
process or an answer other than the one its request expects (``unexpected_answers``) fails
the run too. Both print each process's peak memory under load beside the two
idle figures; ``--rss-every S`` prints every process's memory to stderr that often.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testkit import nginx as nginx_proxy  # noqa: E402 - after the path is set for "python bench/chaos.py"
from testkit import procs  # noqa: E402
from testkit.httpload import percentile  # noqa: E402
from testkit.model_builder import build_model  # noqa: E402
from testkit.server import AUTH, TOKEN, Server  # noqa: E402
from testkit.traffic import SOAK_MIX, Load, Tally, client, error_label, processes  # noqa: E402

MIX = {**SOAK_MIX, "long_all_kinds": 8}
FULL_RUN_S = 300.0
ENGINE_KILL_S, WORKER_KILL_S = 40.0, 25.0  # in a run of FULL_RUN_S; shorter runs scale them
GROWTH_LIMIT = 0.10
# ...and by more than this: an nginx worker of 6 MiB takes its connection buffers as clients
# come (6.1 -> 7.0 MiB in a 30 s run), which is not a leak; a leaking engine or web worker
# grows by far more.
GROWTH_FLOOR_MB = 2.0
# Idle before each memory reading: a new engine or worker settles, and each process gives its
# free heap back (runtime/malloc.py trims a second after its last request).
SETTLE_S = 2.0
# Answers that a fault or the load explains: a full queue, a restarting engine, a full /dev/shm,
# nginx's own 503 for a request whose worker was killed, /health's 503 while the engine is away;
# 400s are the bad requests sent on purpose.
EXPLAINED = {"overloaded_error", "unavailable_error", "overloaded_error (shared memory)",
             "unavailable_error (nginx: upstream connection lost)", "invalid_request_error", "/health: loading",
             "/health: unavailable"}
# Without faults: more clients than MAX_QUEUE_SIZE, and the bad requests sent on purpose.
DELIBERATE = {"overloaded_error", "invalid_request_error"}


@dataclass(frozen=True)
class Plan:
    """What a run does: chaos (``CHAOS``) or a plain soak (``SOAK``)."""

    faults: bool = True
    mix: dict[str, int] = field(default_factory=lambda: MIX)
    shm_size: str | None = "64m"  # None: the machine's /dev/shm
    explained: frozenset[str] = frozenset(EXPLAINED)
    rss_every: float = 0.0  # print every process's memory this often (0: never)


CHAOS = Plan()
SOAK = Plan(faults=False, mix=SOAK_MIX, shm_size=None, explained=frozenset(DELIBERATE))


def label(status: int, data: bytes) -> str:
    if data.startswith(b'{"status":'):  # /health while the engine is loading or restarting
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            return f"/health: {orjson.loads(data).get('status')}"
    name = error_label(data)
    if b"shared memory is full" in data:
        return f"{name} (shared memory)"
    if b"no replica can take the request" in data:  # deploy/nginx/nginx.conf's @unavailable
        return f"{name} (nginx: upstream connection lost)"
    return name


# -- the faults ------------------------------------------------------------------------------------


@dataclass
class Faults:
    engine_kills: int = 0
    worker_kills: int = 0
    sighups: int = 0
    skipped: list[str] = field(default_factory=list)  # a fault whose target was not there at that moment


def schedule(seconds: float) -> list[tuple[float, str]]:
    """(seconds after the start, fault), in order."""
    scale = seconds / FULL_RUN_S
    plan = [(seconds * 0.45, "sighup")]
    for every, what in ((max(ENGINE_KILL_S * scale, 6.0), "engine"), (max(WORKER_KILL_S * scale, 3.0), "worker")):
        plan += [(every * i, what) for i in range(1, int(seconds / every) + 1) if every * i < seconds]
    return sorted(plan)


def strike(server: Server, what: str, faults: Faults, rng: random.Random) -> None:
    if what == "sighup":
        os.kill(server.process.pid, signal.SIGHUP)
        faults.sighups += 1
        return
    pids = procs.engine_pids(server) if what == "engine" else sorted(procs.worker_pids(server))
    if not pids:
        faults.skipped.append(f"{what}: none running")
        return
    with contextlib.suppress(ProcessLookupError):  # gone meanwhile
        os.kill(rng.choice(pids), signal.SIGKILL)
        if what == "engine":
            faults.engine_kills += 1
        else:
            faults.worker_kills += 1


def drive(server: Server, seconds: float, plan: Plan, tick: Callable[[], None], seed: int = 0) -> Faults:
    """Strike on schedule (with ``plan.faults``) for ``seconds``, calling ``tick`` every second."""
    faults, rng, started = Faults(), random.Random(seed), time.monotonic()
    for at, what in schedule(seconds) if plan.faults else []:
        _wait_until(started + at, tick)
        strike(server, what, faults, rng)
    _wait_until(started + seconds, tick)
    return faults


def _wait_until(moment: float, tick: Callable[[], None]) -> None:
    while (now := time.monotonic()) < moment:
        time.sleep(min(1.0, moment - now))
        tick()


# -- what is measured ------------------------------------------------------------------------------


def rss(roles: dict[int, str]) -> dict[int, float]:
    return {pid: procs.rss_mb(pid) for pid in roles}


class Peaks:
    """Each process's largest resident memory under load, sampled; printed every ``every`` seconds."""

    def __init__(self, roles: dict[int, str], start: dict[int, float], every: float) -> None:
        self.roles, self.peak, self.every = roles, dict(start), every
        self.started = self.printed = time.monotonic()

    def __call__(self) -> None:
        now = rss(self.roles)
        for pid, mb in now.items():
            if mb == mb:  # not NaN: the process is still there
                self.peak[pid] = max(self.peak[pid], mb)
        if self.every and time.monotonic() - self.printed >= self.every:
            self.printed = time.monotonic()
            print(f"rss at {self.printed - self.started:5.0f} s:",
                  ", ".join(f"{self.roles[pid]} {now[pid]:.1f}" for pid in sorted(now)), file=sys.stderr, flush=True)


def memory(roles_start: dict[int, str], start: dict[int, float], roles_end: dict[int, str],
           end: dict[int, float], peak: dict[int, float] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Each process's resident MiB at start and end (and its peak under load), and what grew by more
    than GROWTH_LIMIT (and GROWTH_FLOOR_MB): a process alive at both, or the largest process of a role
    (engine, web worker: replaced)."""
    rows, grown = [], []
    for pid in sorted(set(roles_start) | set(roles_end)):
        before, after = start.get(pid), end.get(pid)
        growth = (after - before) / before if before and after else None
        rows.append({"role": roles_start.get(pid) or roles_end[pid], "pid": pid, "start_mb": before,
                     "end_mb": after, "growth": None if growth is None else round(growth, 3),
                     **({"peak_mb": peak[pid]} if peak and pid in peak else {})})
        if before and after and grew(before, after):
            grown.append(f"{rows[-1]['role']} {pid}")
    for role in sorted(set(roles_start.values())):
        first = max((start[p] for p, r in roles_start.items() if r == role), default=0.0)
        last = max((end[p] for p, r in roles_end.items() if r == role), default=0.0)
        if first and grew(first, last):
            grown.append(f"largest {role}")
    return rows, grown


def grew(before_mb: float, after_mb: float) -> bool:
    return after_mb > before_mb * (1 + GROWTH_LIMIT) and after_mb - before_mb > GROWTH_FLOOR_MB


def nginx_retries(access_log: Path, offset: int) -> dict[str, int]:
    """Requests nginx sent to an upstream again after the first broke, from its access log."""
    retried: dict[str, int] = {}
    with open(access_log, "rb") as log:
        log.seek(offset)
        for line in log:
            with contextlib.suppress(orjson.JSONDecodeError):
                entry = orjson.loads(line)
                if "," in entry.get("upstream_status", ""):
                    retried[str(entry["status"])] = retried.get(str(entry["status"]), 0) + 1
    return retried


def sigbus_lines(log: str) -> int:
    return sum("SIGBUS" in line or "code -7" in line for line in log.splitlines())


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """What ``run`` found, before it becomes the report."""

    tally: Tally
    faults: Faults
    restarts: int
    retried: dict[str, int]
    memory: list[dict[str, Any]]
    grown: list[str]
    new_processes: list[int]
    sigbus: int = 0
    shm_left: list[str] = field(default_factory=list)
    exit_code: int = 0


def run(clients: int, seconds: float, warmup: float, workdir: Path, plan: Plan = CHAOS) -> dict[str, Any]:
    """Run the soak; returns the report (also printed as one JSON line)."""
    model = build_model(ROOT / "models" / "bge-m3-tiny", "tiny")
    server = Server(model, workdir / "server.log", shm_size=plan.shm_size, API_TOKEN=TOKEN,
                    LOG_LEVEL="WARNING").start()
    nginx = None
    try:
        nginx, port = nginx_proxy.start(workdir / "nginx", [f"127.0.0.1:{server.port}"])
        found = _under_load(server, nginx.pid, port, (clients, seconds, warmup), plan, workdir / "nginx" / "logs")
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        found_exit = server.stop()
    found.exit_code, found.shm_left, found.sigbus = found_exit, server.shm_left or [], sigbus_lines(server.log())
    result = report(found, (clients, seconds, warmup), plan)
    print(orjson.dumps(result).decode(), flush=True)
    return result


def _under_load(server: Server, nginx_pid: int, port: int, shape: tuple[int, float, float], plan: Plan,
                logs: Path) -> Run:
    (clients, seconds, warmup), tally, load = shape, Tally(), Load()
    threads = [threading.Thread(target=client, args=(port, seed, tally, load, TOKEN, plan.mix, label), daemon=True)
               for seed in range(clients)]
    for thread in threads:
        thread.start()
    load.gate.set()
    time.sleep(warmup)
    load.quiesce()  # memory is compared idle: under load it swings by the batch in hand
    time.sleep(SETTLE_S)
    roles_start = processes(server, nginx_pid)
    start = rss(roles_start)
    offset = (logs / "access.log").stat().st_size
    tally.measuring = True
    load.gate.set()
    peaks = Peaks(roles_start, start, plan.rss_every)
    faults = drive(server, seconds, plan, peaks)
    load.quiesce()  # every request sent is answered (or not) and counted
    tally.measuring = False
    procs.wait_for(lambda: _healthy(server), 120, interval=0.2, what="the server to be ready again")
    time.sleep(SETTLE_S)
    roles_end = processes(server, nginx_pid)
    end = rss(roles_end)
    load.finish()
    for thread in threads:
        thread.join(140)
    rows, grown = memory(roles_start, start, roles_end, end, peaks.peak)
    return Run(tally, faults, procs.engine_restarts(server, AUTH), nginx_retries(logs / "access.log", offset),
               rows, grown, sorted(set(roles_end) - set(roles_start)))


def _healthy(server: Server) -> bool:
    try:
        return requests.get(f"{server.url}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def report(found: Run, shape: tuple[int, float, float], plan: Plan) -> dict[str, Any]:
    (clients, seconds, warmup), tally = shape, found.tally
    answers = sorted(tally.answers.items())
    by_status = {(f"{s} {name}".strip() if s else f"no answer: {name}"): n for (s, name), n in answers}
    unanswered = sum(n for (s, _), n in answers if s == 0)
    # A status line and part of the body, then the end: the web worker was killed while it wrote
    # the answer, which nginx had begun passing on and so cannot send to another worker.
    cut = tally.answers[(0, "IncompleteRead")]
    unexplained = {f"{s} {name}": n for (s, name), n in answers if s not in (0, 200) and name not in plan.explained}
    restarted = not plan.faults and (found.restarts or found.new_processes)
    # Without faults, also a 200 to a bad request or a 4xx to a good one (the status each expects).
    unexpected = {} if plan.faults else dict(tally.errors)
    failures = [what for what, bad in [
        (f"{unanswered - cut} requests without an answer", unanswered - cut),
        (f"{cut} answers cut, more than the {found.faults.worker_kills} worker kills explain",
         cut > found.faults.worker_kills),
        (f"answers no fault explains: {unexplained}", unexplained),
        (f"{found.sigbus} SIGBUS lines in the log", found.sigbus),
        (f"left in /dev/shm after exit: {found.shm_left}", found.shm_left),
        (f"grew by more than {GROWTH_LIMIT:.0%}: {found.grown}", found.grown),
        (f"the server exited with {found.exit_code}", found.exit_code),
        (f"a process was restarted: {found.restarts} engine restarts, new {found.new_processes}", restarted),
        (f"answers other than the expected: {unexpected}", unexpected),
    ] if bad]
    return {
        "run": {"clients": clients, "seconds": seconds, "warmup_s": warmup, "faults": plan.faults,
                "shm": plan.shm_size or "the machine's", "web_workers": 2, "engine": "cpu, tiny model",
                "through": "nginx"},
        "requests": sum(tally.answers.values()),
        "requests_per_s": round(sum(tally.answers.values()) / seconds, 1),
        "by_status": by_status,
        "unanswered": unanswered,
        "unanswered_cut_by_a_worker_kill": cut,
        "unexpected_answers": dict(tally.errors),
        "p50_ms": round(percentile(tally.latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(tally.latencies, 99) * 1000, 1),
        "faults": {"engine_kills": found.faults.engine_kills, "worker_kills": found.faults.worker_kills,
                   "sighups": found.faults.sighups, "skipped": found.faults.skipped},
        "engine_restarts": found.restarts,
        "new_processes": found.new_processes,
        "nginx_sent_again_by_final_status": found.retried,
        "sigbus": found.sigbus,
        "rss_mb": found.memory,
        "shm_entries_after_exit": len(found.shm_left),
        "exit_code": found.exit_code,
        "verdict": "PASS" if not failures else "FAIL: " + "; ".join(failures),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--soak", action="store_true", help="no faults, the plain mix, the machine's /dev/shm")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, help=f"{FULL_RUN_S:.0f}; with --soak 60")
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--shm-size", help="the namespace's /dev/shm (tmpfs size=; 64m, with --soak none)")
    parser.add_argument("--rss-every", type=float, default=0, help="print every process's memory this often")
    args = parser.parse_args()
    plan = dataclasses.replace(SOAK if args.soak else CHAOS, rss_every=args.rss_every)
    if args.shm_size:
        plan = dataclasses.replace(plan, shm_size=args.shm_size)
    seconds = args.seconds or (60.0 if args.soak else FULL_RUN_S)
    with tempfile.TemporaryDirectory(prefix="embsvc-chaos-") as workdir:
        os.chmod(workdir, 0o755)  # nginx, as another user, walks into it
        result = run(args.clients, seconds, args.warmup, Path(workdir), plan)
    sys.exit(0 if result["verdict"] == "PASS" else 1)


if __name__ == "__main__":
    main()
