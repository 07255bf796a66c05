"""The web side: the Falcon WSGI app that gunicorn's workers run, and the master's hooks.

Runs in:      web workers (``api/``, ``core/``, ``openapi/``, ``app``, ``wsgi``); the gunicorn master (``master/``).
May import:   falcon, orjson, tokenizers, prometheus_client, numpy, ``runtime``, and ``gpu_pool``'s
              ``__all__`` only; never torch (tests/unit/test_layout.py checks all three). The API page
              serves files of the swagger-ui-py package without importing it.
Owns:         HTTP: auth, validation, serialization, errors, metrics, the OpenAPI document.
Entry points: ``wsgi:app`` (gunicorn), ``app.create_app`` (tests), ``master.hooks`` (gunicorn.conf.py).

Module map::

    gunicorn master                     web worker (one of WEB_CONCURRENCY)
    ───────────────                     ───────────────────────────────────
    master/hooks      on_starting ───>  wsgi ─> app.create_app(settings, backend)
      settings, model files, pool         api/        one module per endpoint family:
      pre_fork: a slot per worker                     read and check the body, call core, answer
    master/model_files, download_progress  core/      embedding, scoring, tokenize services over
    master/access_log (gunicorn logger)               one backend port (core/backend.Backend,
    master/metrics_dir                                implemented by gpu_pool.EngineClient)
                                          openapi/    the document, from the settings
    config     Settings, read once from the environment (master and workers)
    errors     the closed set of API errors; engine errors become HTTP statuses here only

A new endpoint: its parsing and resource in ``api/`` (a new module per family), its work
in ``core/``, its route in ``app.create_app``, its schema in ``openapi/``, its contract in
docs/api.md.
"""

__version__ = "1.0.0"
