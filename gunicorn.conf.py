"""gunicorn settings and hooks. Start with: gunicorn -c gunicorn.conf.py embsvc.wsgi:app

The hooks start the engine processes with the master and stop them with it
(see embsvc/master/hooks.py). This file is read again on SIGHUP, so it only
declares; the engines are started once, in on_starting.
"""

from embsvc.config import DRAIN_FACTOR, ConfigError, load_settings
from embsvc.master import hooks
from embsvc.master.buffered_worker import BufferedThreadWorker
from runtime import logs

try:
    _settings = load_settings()
except ConfigError as exc:
    raise SystemExit(f"configuration error: {exc}") from None

bind = _settings.bind
workers = _settings.web_concurrency
# Threads wait on the engine, not on the CPU: many per worker keep the engine's
# batches full while each worker stays a single small process. 32 suits a GPU host
# too, where WEB_CONCURRENCY grows with the cores instead (embsvc/config.py).
# gthread, with each request read whole on the worker's event loop before a thread takes it:
# a slow client holds no thread, so /health answers beside any number of them (up to
# worker_connections each; more wait in the kernel's backlog), and READ_TIMEOUT_S and
# READ_DEADLINE_S end the ones that stall or crawl with a 408.
# GUNICORN_CMD_ARGS="-k gthread" overrides the class (bench.priority --host-cost compares the two).
threads = 32
# A body is read here up to what the app drains of one it refuses (body_drain.py), and at most
# as many bytes of bodies at once as the threads held when they read them themselves.
worker_class = BufferedThreadWorker.with_limits(
    _settings.read_timeout_s, _settings.read_deadline_s, max_body=DRAIN_FACTOR * _settings.max_request_bytes,
    buffer_budget=threads * _settings.max_request_bytes)
timeout = 60
graceful_timeout = int(_settings.request_timeout_s) + 5
keepalive = 5
# gunicorn's control socket sits at one fixed path per user: two servers on a machine would clash.
control_socket_disable = True
preload_app = False  # the app needs the slot the master gives each worker in pre_fork
loglevel = _settings.log_level.lower()
# gunicorn's lines, its access log included, go through the service's logging
# (LOG_FORMAT json or text, with the request id); one access record per request.
logconfig_dict = logs.dict_config(_settings.log_level, _settings.log_format)
logger_class = "embsvc.master.access_log.AccessLogger"

on_starting = hooks.on_starting
pre_fork = hooks.pre_fork
post_fork = hooks.post_fork
post_worker_init = hooks.post_worker_init
child_exit = hooks.child_exit
on_exit = hooks.on_exit
