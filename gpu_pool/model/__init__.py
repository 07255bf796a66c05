"""BGE-M3, and the bge-reranker-v2-m3 cross-encoder beside it, on a device: the only package that
imports torch and transformers.

Runs in:      the engine process only.
May import:   torch, transformers, numpy, ``gpu_pool.wire``; never ``gpu_pool.engine``.
Owns:         the packed XLM-R encoder (``xlmr``), its products (``cpu_linear``) and its compiled CPU
              attention and products (``native``), the three M3 heads
              (``m3``), the cross-encoder and
              the engine's one model (``reranker``), DEVICE/DTYPE (``device``),
              the port the engine drives (``port``, torch-free), the FLOPs per token (``flops``, torch-free).
Entry points: ``load.load`` (called by ``gpu_pool.engine.main``).
"""
