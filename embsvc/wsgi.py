"""gunicorn's entry point: ``gunicorn -c gunicorn.conf.py embsvc.wsgi:app``."""

from embsvc import lifecycle
from embsvc.app import create_app

app = create_app(lifecycle.settings(), lifecycle.engine_client(), lifecycle.metrics_dir())
