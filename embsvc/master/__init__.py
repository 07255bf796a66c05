"""The server's life in the gunicorn master: hooks, model files, logging and metrics plumbing.

Runs in:      the gunicorn master (``hooks.post_fork`` also in each new web worker, right after fork).
May import:   gunicorn, huggingface_hub, ``embsvc.config``, ``gpu_pool``'s ``__all__``, ``runtime``;
              never prometheus_client at import time (``metrics_dir`` says why).
Owns:         starting and stopping the engine pool (``hooks``), the model folder and its download
              (``model_files``, ``download_progress``), the access log, the metrics folder.
Entry points: the hooks named in gunicorn.conf.py; ``access_log.AccessLogger`` (gunicorn's logger_class).
"""
