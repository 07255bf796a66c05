"""The server's life in the gunicorn master: hooks, model files, logging and metrics plumbing.

Runs in:      the gunicorn master (``hooks.post_fork`` also in each new web worker, right after fork;
              ``buffered_worker`` is the web workers' gunicorn worker class, their event loop).
May import:   gunicorn, huggingface_hub, ``embsvc.config``, ``gpu_pool``'s ``__all__``, ``runtime``;
              never prometheus_client at import time (``metrics_dir`` says why).
Owns:         starting and stopping the engine pool (``hooks``), the model folder and its download
              (``model_files``, ``download_progress``), the access log, the metrics folder, and reading
              each request whole before a thread takes it (``buffered_worker``, ``framing``).
Entry points: the hooks named in gunicorn.conf.py; ``access_log.AccessLogger`` (gunicorn's logger_class);
              ``buffered_worker.BufferedThreadWorker`` (gunicorn's worker_class).
"""
