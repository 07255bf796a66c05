"""The machine's own bfloat16 matrix-product peak, measured with torch (one JSON line)."""

from __future__ import annotations

import json
import os
import time

import torch


def main(size: int = 4096, repeats: int = 6) -> None:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    print(json.dumps({"bf16_peak_gflops": round(2 * size**3 / best / 1e9, 1), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
