"""Gunicorn settings of the production web tier (``gunicorn -c ecard/gunicorn.conf.py ecard.wsgi``).

Everything is read from the environment so the same file serves one laptop and a fleet of web
machines (docs/deploy.md):

``GUNICORN_BIND``          address to listen on (default ``127.0.0.1:8000``; a TLS-terminating proxy
                           or load balancer sits in front in production)
``WEB_CONCURRENCY``        worker processes (default: one per core)
``GUNICORN_THREADS``       threads per worker (default 8: ``gthread`` workers, which keep connections
                           alive and overlap database round trips; 1 selects ``sync`` workers)
``GUNICORN_TIMEOUT``       seconds a request may take before its worker is killed and replaced (30)
``GUNICORN_KEEPALIVE``     seconds an idle keep-alive connection stays open (gthread only; 5)
``GUNICORN_MAX_REQUESTS``  recycle a worker after this many requests, with jitter (default 20000;
                           0 disables)
``GUNICORN_ERRORLOG``      where gunicorn's own log goes (default ``-``: stderr)
``GUNICORN_CERTFILE``, ``GUNICORN_KEYFILE``  serve HTTPS with this certificate and key (PEM)

Request size limits: the request line and header limits below are gunicorn's; bodies are limited by
the application (``ecard/limits.py``: ``Content-Length`` at most ``ECARD_MAX_UPLOAD_BYTES``, and
``DATA_UPLOAD_MAX_MEMORY_SIZE`` for form and JSON data, 5 MiB by default: a CAP upload fits, a
flood does not).
Gunicorn's own log records are JSON lines like the application's (``ecard.observability``).
"""

from __future__ import annotations

import os
from typing import Any

from gunicorn import glogging  # type: ignore[import-untyped]


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


_cores = os.cpu_count() or 1

bind = [item.strip() for item in os.environ.get("GUNICORN_BIND", "127.0.0.1:8000").split(",") if item.strip()]
# Measured on 2 cores (docs/benchmarks.md, "Load"): gthread workers doubled the session rate of
# sync workers (keep-alive saves a TLS handshake per exchange; threads overlap the database round
# trips). Once the relay's statements were prepared an exchange became CPU-bound, and one process
# per core (2 x 8 threads) served 10-15 % more sessions at less CPU each than 3 or 6 processes:
# more processes than cores only contend for them (and split the per-process caches).
workers = _int("WEB_CONCURRENCY", max(1, _cores))
threads = _int("GUNICORN_THREADS", 8)
worker_class = "gthread" if threads > 1 else "sync"
timeout = _int("GUNICORN_TIMEOUT", 30)
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = _int("GUNICORN_KEEPALIVE", 5)
backlog = _int("GUNICORN_BACKLOG", 2048)
max_requests = _int("GUNICORN_MAX_REQUESTS", 20000)
max_requests_jitter = max_requests // 10 if max_requests else 0

# Request limits (bodies: ecard/limits.py and Django's DATA_UPLOAD_MAX_MEMORY_SIZE).
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190

# Load the application once in the master: workers fork ready (a killed worker is replaced in
# milliseconds). Django opens database connections lazily, per worker, after the fork.
preload_app = True
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - heartbeat files, not data
proc_name = "ecard-web"
# gunicorn's control socket (``gunicornc``): per instance, so several masters can run on one machine.
if os.environ.get("GUNICORN_CONTROL_SOCKET"):
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]
else:
    control_socket_disable = True

# The application logs one JSON access line per request with its request id (ecard.access);
# gunicorn's own access log would duplicate it without the id.
accesslog = None


class _NoAccessLog(glogging.Logger):
    """Gunicorn's logger without its access lines: the application writes one JSON line per request
    (``ecard.access``, with the request id), and with a ``logconfig_dict`` gunicorn would format
    its own for every request only to drop it."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None


logger_class = _NoAccessLog
errorlog = os.environ.get("GUNICORN_ERRORLOG", "-")
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
capture_output = False
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "ecard.observability.JsonFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
        "error_console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
    },
    "root": {"level": "INFO", "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["error_console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
    },
}

# TLS in gunicorn itself (prod-local generates a self-signed pair); in a fleet, TLS usually ends at
# the load balancer instead and BEHIND_TLS_PROXY=1 tells Django to trust its X-Forwarded-Proto.
certfile = os.environ.get("GUNICORN_CERTFILE") or None
keyfile = os.environ.get("GUNICORN_KEYFILE") or None

# Behind a TLS-terminating proxy on another machine, trust its X-Forwarded-* headers only from
# its address (FORWARDED_ALLOW_IPS); on one machine the proxy is local.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
