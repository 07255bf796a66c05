"""The lone query's reference: a bare transformers forward of the same text, in-process, with
transformers' and torch's defaults (what a user of the library gets). One JSON line.

    python -m bench.bare_forward MODEL_FOLDER "the query text" [--dtype bfloat16] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModel, AutoTokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("text")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model, dtype=getattr(torch, args.dtype), add_pooling_layer=False).eval()
    inputs = tokenizer([args.text], return_tensors="pt")
    times = []
    with torch.inference_mode():
        for i in range(args.repeats + 3):
            started = time.perf_counter()
            model(**inputs)
            if i >= 3:  # the first passes pay for allocations
                times.append(time.perf_counter() - started)
    print(json.dumps({"tokens": int(inputs["input_ids"].shape[1]), "threads": torch.get_num_threads(),
                      "p50_ms": round(statistics.median(times) * 1000, 2)}))


if __name__ == "__main__":
    main()
