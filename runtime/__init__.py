"""Process set-up that every process of the server shares: logging and malloc.

Runs in:      the gunicorn master, the web workers and the engines.
May import:   the standard library and orjson only.
Owns:         the log format and the request-id context (``logs``), malloc tuning (``malloc``).
Entry points: ``logs.configure``, ``logs.dict_config`` (gunicorn.conf.py), ``malloc.limit_arenas``,
              ``malloc.trim_when_idle`` (the engines and, since they may hold large answers, the web workers).
"""
