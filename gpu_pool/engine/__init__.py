"""The engine process: one per device, it batches jobs by tokens and runs the model.

Runs in:      the engine process (``spec`` also in the master, which starts it).
May import:   numpy, the standard library, ``gpu_pool.wire``, ``runtime``, the model's
              torch-free port (``gpu_pool.model.port``); the model itself through ``main``
              only, so that torch loads in the engine alone.
Owns:         the loop and its threads (``loop``), batching (``batching``, a pure
              function), jobs in flight (``jobs``, ``score_job``), packed batches (``batch``).
Entry points: ``main.run`` (the process), ``spec.EngineSpec``.
"""
