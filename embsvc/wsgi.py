"""gunicorn's entry point: ``gunicorn -c gunicorn.conf.py embsvc.wsgi:app``."""

from embsvc.app import create_app
from embsvc.master import hooks

app = create_app(hooks.settings(), hooks.engine_client(), hooks.metrics_dir())
