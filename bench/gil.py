"""How long a web worker's other thread (a query's) waits for the GIL while the worker writes a
bulk answer of all three kinds, with the serializer handing the GIL on between items
(``serialize.give_way``) and without, in turns.

    .venv/bin/python -m bench.gil [--rounds 6] [--texts 64] [--tokens 350]

The answer: ``--texts`` inputs of ``--tokens`` tokens at bge-m3's sizes (1024-wide dense and
ColBERT rows, float16 base64 as an indexer asks for them, sparse weights and their token ids),
made of random numbers in memory: the serializer's own work, no server. Beside it a thread that
wakes every 0.2 ms (a query's thread wanting the GIL to read its request or write its answer)
records the longest and the 99th-percentile gap between its wake-ups. Prints each turn, then
one JSON line of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from unittest import mock

import numpy as np

from embsvc.core import serialize
from gpu_pool import Kind
from gpu_pool.m3math import lexical_weights
from testkit.httpload import percentile

DIM = 1024
TICK_S = 0.0002


class Answer:
    """A bulk result as the serializers read it (``windows.Vectors``), in ordinary memory."""

    def __init__(self, texts: int, tokens: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.ids = [rng.integers(5, 250_000, tokens) for _ in range(texts)]
        self.unused_ids = np.array([0, 1, 2, 3])
        self._dense = rng.standard_normal((texts, DIM)).astype(np.float16)
        self._weights = rng.random((texts, tokens)).astype(np.float32)
        self._colbert = rng.standard_normal((texts, tokens - 1, DIM)).astype(np.float16)

    def __len__(self) -> int:
        return len(self.ids)

    def dense(self, i: int) -> np.ndarray:
        return self._dense[i]

    def token_weights(self, i: int) -> np.ndarray:
        return self._weights[i]

    def sparse(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return lexical_weights(self.ids[i], self._weights[i], self.unused_ids)

    def colbert(self, i: int) -> np.ndarray:
        return self._colbert[i]


class Ticker:
    """A thread that wakes every ``TICK_S`` and keeps the gaps between its wake-ups."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Ticker:
        self._thread.start()
        time.sleep(0.02)
        self.gaps.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(TICK_S)
            now = time.perf_counter()
            self.gaps.append(now - last)
            last = now


def turn(answer: Answer, giving_way: bool) -> dict[str, float]:
    """One answer serialized beside the ticker: its time and the ticker's gaps (ms)."""
    kinds = Kind.DENSE | Kind.SPARSE | Kind.COLBERT
    with mock.patch.object(serialize, "give_way", serialize.give_way if giving_way else lambda: None), \
            Ticker() as ticker:
        began = time.perf_counter()
        body = serialize.dumps_items({"object": "list"}, "data",
                                     serialize.embedding_items(answer, kinds, "base64", "float16"), {"model": "m"})
        seconds = time.perf_counter() - began
    gaps = ticker.gaps
    return {"serialize_ms": round(1000 * seconds, 1), "body_mb": round(len(body) / 1e6, 1),
            "longest_wait_ms": round(1000 * max(gaps), 2), "p99_wait_ms": round(1000 * percentile(gaps, 99), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=350)
    args = parser.parse_args()
    answer = Answer(args.texts, args.tokens)
    turn(answer, True)  # warm-up: the allocator's first large blocks
    turns: dict[str, list[dict[str, float]]] = {"giving_way": [], "not_giving_way": []}
    for round_ in range(args.rounds):
        order = ("giving_way", "not_giving_way") if round_ % 2 == 0 else ("not_giving_way", "giving_way")
        for name in order:
            figures = turn(answer, name == "giving_way")
            turns[name].append(figures)
            print(name, figures, flush=True)
    medians = {name: {key: statistics.median(t[key] for t in runs) for key in runs[0]}
               for name, runs in turns.items()}
    print(json.dumps({"texts": args.texts, "tokens": args.tokens, "rounds": args.rounds, "medians": medians}))


if __name__ == "__main__":
    main()
