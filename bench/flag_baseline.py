"""FlagEmbedding's ``BGEM3FlagModel.encode`` in-process, with its CPU defaults (float32, batch 256).

Run as a separate process by bench/run.py so that it has the machine to itself.
Prints one JSON line: texts, tokens (after truncation), seconds, tokens_per_s.
"""

from __future__ import annotations

import argparse
import json
import time

from FlagEmbedding import BGEM3FlagModel
from transformers import AutoTokenizer

from testkit.workload import texts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--texts", type=int, required=True)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    sample = texts(args.texts)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokens = sum(len(ids) for ids in tokenizer(sample, truncation=True, max_length=args.max_length)["input_ids"])
    model = BGEM3FlagModel(args.model, use_fp16=False, devices="cpu")
    model.encode(sample[:2], max_length=args.max_length)  # warm-up
    started = time.perf_counter()
    model.encode(sample, max_length=args.max_length, return_dense=True, return_sparse=True,
                 return_colbert_vecs=True)
    seconds = time.perf_counter() - started
    print(json.dumps({"texts": len(sample), "tokens": tokens, "seconds": round(seconds, 2),
                      "tokens_per_s": round(tokens / seconds, 1)}))


if __name__ == "__main__":
    main()
