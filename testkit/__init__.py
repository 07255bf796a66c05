"""What tests and benchmarks share: building models, starting servers, looking at processes.

Runs in:      the test or benchmark process (never in the server).
May import:   anything; the server's packages only to read their constants or drive the model's port (``passes``).
Owns:         the random bge-m3 folder (``model_builder``), the gunicorn starter (``server``),
              process and shared-memory probes (``procs``), benchmark texts (``workload``),
              a Hugging Face Hub stand-in (``fake_hub``), the engine-fault injector (``engine_faults/``),
              an HTTP load generator (``httpload``) and a bare Falcon app to measure it by (``bare_app``),
              a whole pass of the engine's model in this process (``passes``).
Entry points: ``build_model``, ``Server``, ``python -m testkit.model_builder``.
"""
