"""BGE-M3 on a device: the only package that imports torch and transformers.

Runs in:      the engine process only.
May import:   torch, transformers, numpy, ``gpu_pool.wire``, ``gpu_pool.engine.batch`` (the port it implements).
Owns:         the packed XLM-R encoder (``xlmr``), the three M3 heads (``m3``), DEVICE/DTYPE (``device``).
Entry points: ``load.load`` (called by ``gpu_pool.engine.main``).
"""
