"""Throughput before and after a change: another checkout's server and this one's, side by side.

    .venv/bin/python -m bench.ab OTHER_TREE [--rounds 2] [--bulk-seconds 45]

OTHER_TREE is a checkout of the code to compare with (``git worktree add /tmp/base HEAD~1``);
it runs on this checkout's virtual environment. Both servers (full-size model, DTYPE=auto,
default settings) are up at once and take turns, in alternating order, so that the machine's
drift between minutes falls on both alike. Each turn: bench.priority's mixed all-kinds load
(96 texts in 32 requests from 8 clients) and its bulk load alone (four clients, eight
150-400-word texts per request, all kinds), or with ``--with-queries`` that bulk load with its
five-word query every 1.5 s (the bulk's tokens/s, and the queries' p99 as "query_p99_ms").
Prints each turn's figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench.priority import bulk_alone, bulk_with_queries, mixed_all_kinds
from testkit import server as testkit_server
from testkit.model_builder import build_model
from testkit.server import ROOT, TOKEN, Server


def start(tree: Path, model: Path, log: Path) -> Server:
    testkit_server.ROOT = tree  # the server's working directory: the code it runs
    try:
        return Server(model, log, API_TOKEN=TOKEN, DTYPE="auto", MAX_QUEUE_SIZE="1000", REQUEST_TIMEOUT_S="900",
                      PYTHONPATH=str(tree)).start(timeout=600)
    finally:
        testkit_server.ROOT = ROOT


def bulk_figures(server: Server, args: argparse.Namespace) -> dict[str, float]:
    if not args.bulk_seconds:
        return {}
    if not args.with_queries:
        return {"bulk": bulk_alone(server, args.bulk_seconds)["tokens_per_s"]}
    both = bulk_with_queries(server, args.bulk_seconds)
    return {"bulk": both["bulk"]["tokens_per_s"], "query_p99_ms": both["queries"]["p99_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("other", type=Path, help="the checkout to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bulk-seconds", type=float, default=45, help="0: the mixed load only")
    parser.add_argument("--with-queries", action="store_true", help="the bulk load with queries beside it")
    args = parser.parse_args()
    model = build_model(ROOT / "models" / "bge-m3-full", "full")
    trees = {"other": args.other.resolve(), "this": ROOT}
    figures: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {name: start(tree, model, Path(tmp) / f"{name}.log") for name, tree in trees.items()}
        try:
            for turn in range(args.rounds):
                for name in ("other", "this") if turn % 2 == 0 else ("this", "other"):
                    turn_figures = {"mixed": mixed_all_kinds(servers[name])["tokens_per_s"],
                                    **bulk_figures(servers[name], args)}
                    for load, value in turn_figures.items():
                        figures[name].setdefault(load, []).append(value)
                    print(f"{name} turn {turn}: {turn_figures}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    ratios = {load: round(statistics.mean(values) / statistics.mean(figures["other"][load]), 3)
              for load, values in figures["this"].items()}
    print(json.dumps({"tokens_per_s": figures, "this_vs_other": ratios}))


if __name__ == "__main__":
    main()
