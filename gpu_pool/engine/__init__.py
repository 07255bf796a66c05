"""The engine process: one per device, it batches jobs by tokens and runs the model.

Runs in:      the engine process (``spec`` also in the master, which starts it).
May import:   numpy, the standard library, ``gpu_pool.wire``, ``gpu_pool.devices``, ``runtime``,
              the model's torch-free port (``gpu_pool.model.port``); the model itself through
              ``main`` only, so that torch loads in the engine alone.
Owns:         the threads (``loop`` builds them: ``reader``, ``planner``, ``device_thread``,
              ``answers``), the job table (``jobs``, ``score_job``), choosing a batch
              (``choosing``, a pure function) and packing it (``packed``), the lanes (``lanes``).
Entry points: ``main.run`` (the process), ``spec.EngineSpec``.
"""
