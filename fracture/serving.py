"""`python -m fracture serve`: the app under gunicorn, a production WSGI server, by default.

Bounded: `workers` processes (each loads the model once; no preloading in the master, which would
fork an initialised TensorFlow), `threads` each, and a client must send a request's headers and
body within `request_timeout` seconds, or its connection is cut (a body that stops half way gets
408). Gunicorn's own limits bound the request line and headers. `serve --dev` runs Flask's
development server (Werkzeug) instead, with its debugger off.
"""

from __future__ import annotations

import logging
import os

from fracture.errors import FractureError

log = logging.getLogger(__name__)

WORKER_TIMEOUT = 300  # seconds a worker may go silent (loading and warming up a large model) before a restart
MAX_WORKERS = max(1, os.cpu_count() or 1)


def timeout_worker_class(request_timeout: float):
    """gunicorn's threaded worker, with a socket timeout on every client connection while it is
    read: a client that declares a body and stalls frees its thread after `request_timeout`."""
    from gunicorn.workers.gthread import ThreadWorker

    class RequestTimeoutWorker(ThreadWorker):
        def handle(self, conn):
            init = conn.init

            def init_with_timeout():  # the socket is blocking (no timeout) when this runs
                init()
                conn.sock.settimeout(request_timeout)

            conn.init = init_with_timeout
            return super().handle(conn)

    return RequestTimeoutWorker


def options(host: str, port: int, workers: int, threads: int, request_timeout: float) -> dict:
    if not 1 <= workers <= MAX_WORKERS:
        raise FractureError(f"--workers must be between 1 and {MAX_WORKERS} (each loads the model)")
    if not 1 <= threads <= 64:
        raise FractureError("--threads must be between 1 and 64")
    if not 0 < request_timeout <= 3600:
        raise FractureError("--request-timeout must be a number of seconds in (0, 3600]")
    return {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": timeout_worker_class(request_timeout),
        "timeout": WORKER_TIMEOUT,
        "graceful_timeout": 30,
        "keepalive": 5,
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        "preload_app": False,
        "accesslog": "-",
        "errorlog": "-",
    }


def run_gunicorn(app_factory, settings: dict) -> None:
    """Serve `app_factory()` (called in each worker) with gunicorn under `settings`."""
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:
        raise FractureError("gunicorn is not installed (pip install gunicorn, or `serve --dev` for the "
                            "development server)") from None

    class FractureServer(BaseApplication):
        def load_config(self):
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self):
            return app_factory()

    FractureServer().run()
