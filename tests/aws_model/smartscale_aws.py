#!/usr/bin/env python3
"""moto server plus SmartScale's Auto Scaling lifecycle model, on one port.

    python tests/aws_model/smartscale_aws.py --host 127.0.0.1 --port 5000

Serves every moto service like `moto_server`, with the lifecycle-hook model of
asg_model.py patched into moto's Auto Scaling backend, and the JSON control
endpoints of docs/interfaces.md ("Test world control endpoints") under /_smartscale/.
With --port 0 the first stdout line names the chosen port:
    listening on http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from moto.moto_api._internal.models import moto_api_backend  # noqa: E402
from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server  # noqa: E402
from werkzeug.wrappers import Request, Response  # noqa: E402

import asg_model as model  # noqa: E402

# Services whose requests read or change what the model owns. Others (e.g. SQS long
# polls) run without the lock so they cannot stall the clock.
LOCKED_SERVICES = {"autoscaling", "ec2", "cloudformation", "moto_api"}
TICK_SECONDS = 0.2


def _json(status: int, body) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": message})


def control(request: Request) -> Response:
    """The /_smartscale/ endpoints; the caller holds model.LOCK."""
    path, method = request.path.rstrip("/"), request.method
    routes = {
        "/_smartscale/health": "GET",
        "/_smartscale/clock": "GET",
        "/_smartscale/clock/advance": "POST",
        "/_smartscale/instances": "GET",
        "/_smartscale/reset": "POST",
    }
    if path.startswith("/_smartscale/instances/"):
        expected = "GET"
    elif path in routes:
        expected = routes[path]
    else:
        return _error(404, f"unknown control endpoint {request.path}")
    if method != expected:
        return _error(405, f"{request.path} expects {expected}")

    if path == "/_smartscale/health":
        return _json(200, {"ok": True})
    if path == "/_smartscale/clock":
        return _json(200, model.clock())
    if path == "/_smartscale/clock/advance":
        try:
            body = json.loads(request.get_data(as_text=True) or "null")
        except ValueError:
            return _error(400, "body must be JSON like {\"seconds\": 300}")
        seconds = body.get("seconds") if isinstance(body, dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
            return _error(400, "\"seconds\" must be a non-negative number")
        model.advance(float(seconds))
        return _json(200, model.clock())
    if path == "/_smartscale/instances":
        return _json(200, model.instances())
    if path.startswith("/_smartscale/instances/"):
        found = model.instance(path.rsplit("/", 1)[1])
        return _json(200, found) if found else _error(404, "unknown instance")
    # /_smartscale/reset
    moto_api_backend.reset()
    model.wipe()
    return _json(200, {"ok": True})


class App:
    """WSGI app: control endpoints, else moto's own dispatcher."""

    def __init__(self) -> None:
        self.moto = DomainDispatcherApplication(create_backend_app)

    def __call__(self, environ, start_response):
        with model.LOCK:  # due timeouts are applied before every request is seen
            _tick()
        if environ.get("PATH_INFO", "").startswith("/_smartscale"):
            with model.LOCK:
                return control(Request(environ))(environ, start_response)
        app = self.moto.get_application(environ)
        if getattr(app, "service", None) not in LOCKED_SERVICES:
            return app(environ, start_response)
        with model.LOCK:
            # Materialise the body inside the lock: Flask may build it lazily.
            result = app(environ, start_response)
            try:
                chunks = list(result)
            finally:
                getattr(result, "close", lambda: None)()
            if environ.get("PATH_INFO", "").startswith("/moto-api/reset") and environ.get("REQUEST_METHOD") == "POST":
                model.wipe()  # moto forgot everything; the model must too
            return chunks


def _tick() -> None:
    try:
        model.apply_due()
    except Exception:  # never let a model bug take the server or a request down
        traceback.print_exc()


def _ticker() -> None:
    while True:
        time.sleep(TICK_SECONDS)
        with model.LOCK:
            _tick()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000, help="0 picks a free port")
    args = parser.parse_args(argv)

    # Bind ourselves so a busy port gives one clear line instead of werkzeug's text.
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(128)
    except OSError as err:
        print(f"smartscale_aws: cannot listen on {args.host}:{args.port}: {err.strerror}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    os.environ.setdefault("MOTO_PORT", str(port))  # moto builds some URLs from it

    model.install()
    server = make_server(
        args.host, port, App(), threaded=True, request_handler=MotoRequestHandler, fd=sock.fileno()
    )
    threading.Thread(target=_ticker, name="lifecycle-ticker", daemon=True).start()
    # All state is in memory: on SIGTERM/SIGINT leave at once rather than wait for keep-alive clients.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: os._exit(0))
    print(f"listening on http://{args.host}:{port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
