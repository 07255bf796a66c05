"""What the web workers' niceness costs bulk work: the server's dense tokens/s at 8 texts of 128
tokens (bench.cpu's load: four clients) with ``WEB_WORKER_NICE`` 5 (the default) and 0, two
servers up at once (full-size random model, DTYPE=auto), measured in turns.

    PYTHONPATH=. .venv/bin/python bench/web_nice.py [--turns 6]

Prints a JSON line per turn, then the medians and the median of the turns' ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench.cpu import MODELS, TOKEN, Served
from testkit.model_builder import build_model
from testkit.server import Server

NICENESS = ("5", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=6)
    args = parser.parse_args()
    model = build_model(MODELS / "bge-m3-full", "full")
    with tempfile.TemporaryDirectory() as tmp:
        servers = {nice: Server(model, Path(tmp) / f"server-{nice}.log", API_TOKEN=TOKEN, DTYPE="auto",
                                MAX_QUEUE_SIZE="1000", REQUEST_TIMEOUT_S="1200", WEB_WORKER_NICE=nice)
                   for nice in NICENESS}
        for server in servers.values():
            server.start(timeout=900)
        try:
            served = {nice: Served(server) for nice, server in servers.items()}
            got: dict[str, list[float]] = {nice: [] for nice in NICENESS}
            for turn in range(args.turns):
                for nice in NICENESS if turn % 2 == 0 else NICENESS[::-1]:
                    got[nice].append(round(served[nice].tokens_per_s("8x128"), 1))
                print(json.dumps({"turn": turn, **{f"nice_{n}": got[n][-1] for n in NICENESS}}), flush=True)
        finally:
            for server in servers.values():
                server.stop()
    ratios = [five / zero for five, zero in zip(got["5"], got["0"], strict=True)]
    print(json.dumps({"medians": {f"nice_{n}": statistics.median(got[n]) for n in NICENESS},
                      "nice_5_vs_0": round(statistics.median(ratios), 3)}))


if __name__ == "__main__":
    main()
