"""The lone query's reference: a bare transformers forward of the same text, with transformers'
and torch's defaults (what a user of the library gets).

bench.priority holds one in its own process and times it in turns with the server's lone
query, so that both see the machine in the same state (a shared machine's speed drifts by a
quarter between minutes). Alone: ``python -m bench.bare_forward MODEL_FOLDER "text"`` (one JSON line).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer


class BareForward:
    def __init__(self, model: Path, text: str, dtype: str = "bfloat16") -> None:
        tokenizer = AutoTokenizer.from_pretrained(str(model))
        self.model = AutoModel.from_pretrained(str(model), dtype=getattr(torch, dtype), add_pooling_layer=False)
        self.model.eval()
        self.inputs = tokenizer([text], return_tensors="pt")
        self.tokens = int(self.inputs["input_ids"].shape[1])
        self.times(3)  # the first passes pay for allocations

    def times(self, count: int) -> list[float]:
        out = []
        with torch.inference_mode():
            for _ in range(count):
                started = time.perf_counter()
                self.model(**self.inputs)
                out.append(time.perf_counter() - started)
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("text")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    bare = BareForward(args.model, args.text)
    p50 = statistics.median(bare.times(args.repeats))
    print(json.dumps({"tokens": bare.tokens, "threads": torch.get_num_threads(), "p50_ms": round(p50 * 1000, 2)}))


if __name__ == "__main__":
    main()
