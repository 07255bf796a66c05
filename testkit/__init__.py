"""What tests and benchmarks share: building models, starting servers, looking at processes.

Runs in:      the test or benchmark process (never in the server).
May import:   anything; the server's packages only to read their constants, drive the model's port
              (``passes``) or start engines as the master does (``engines``).
Owns:         the random bge-m3 folder (``model_builder``) and bge-reranker-v2-m3 folder
              (``reranker_builder``), the gunicorn starter and the API token of
              the servers it starts (``server``), process and shared-memory probes (``procs``),
              benchmark texts and the parity texts (``workload``), a Hugging Face Hub stand-in
              (``fake_hub``), the engine-fault injector (``engine_faults/``), the one HTTP load
              generator of tests and benchmarks (``httpload``) and a bare Falcon app to measure it by
              (``bare_app``), the soaks' clients (``traffic``), engines started from the test process
              (``engines``), a whole pass of the engine's model in this process (``passes``).
Entry points: ``build_model``, ``build_reranker``, ``Server``, ``python -m testkit.model_builder``,
              ``python -m testkit.reranker_builder``.
"""
