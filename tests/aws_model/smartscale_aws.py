#!/usr/bin/env python3
"""moto server plus SmartScale's AWS model (Auto Scaling, DynamoDB TTL, faults, prices), on one port.

    python tests/aws_model/smartscale_aws.py --host 127.0.0.1 --port 5000

Serves every moto service like `moto_server`, with the Auto Scaling model of
asg_model.py patched into moto's backend, DynamoDB TTL deletion and injected faults
(ddb_model.py), EC2 prices (the Price List Query API's GetProducts and
DescribeSpotPriceHistory, prices_model.py), and the JSON control endpoints of
docs/interfaces.md ("Test world control endpoints", control.py) under /_smartscale/.
With --port 0 the first stdout line names the chosen port:
    listening on http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
import traceback
from http import HTTPStatus

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server  # noqa: E402
from werkzeug.wrappers import Request  # noqa: E402

import asg_model as model  # noqa: E402
import control  # noqa: E402
import ddb_model  # noqa: E402
import prices_model  # noqa: E402

# Services whose requests read or change what the model owns. Others (e.g. SQS long
# polls) run without the lock so they cannot stall the clock.
LOCKED_SERVICES = {"autoscaling", "ec2", "cloudformation", "moto_api", "dynamodb"}
TICK_SECONDS = 0.2


class App:
    """WSGI app: control endpoints, else moto's own dispatcher."""

    def __init__(self) -> None:
        self.moto = DomainDispatcherApplication(create_backend_app)

    def __call__(self, environ, start_response):
        with model.LOCK:  # due timeouts are applied before every request is seen
            _tick()
        if environ.get("PATH_INFO", "").startswith("/_smartscale"):
            with model.LOCK:
                return control.handle(Request(environ))(environ, start_response)
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("AWSPriceListService."):  # moto has no Price List API
            with model.LOCK:
                status, headers, body = prices_model.pricing(environ)
            start_response(f"{status} {HTTPStatus(status).phrase}", headers)
            return [body]
        app = self.moto.get_application(environ)
        if getattr(app, "service", None) not in LOCKED_SERVICES:
            return app(environ, start_response)
        with model.LOCK:
            fault = ddb_model.intercept(environ)
            if fault is not None:  # an injected DynamoDB error, in DynamoDB's shape
                status, headers, body = fault
                start_response(f"{status} {'Internal Server Error' if status == 500 else 'Bad Request'}", headers)
                return [body]
            # Materialise the body inside the lock: Flask may build it lazily.
            result = app(environ, start_response)
            try:
                chunks = list(result)
            finally:
                getattr(result, "close", lambda: None)()
            if environ.get("PATH_INFO", "").startswith("/moto-api/reset") and environ.get("REQUEST_METHOD") == "POST":
                control.wipe()  # moto forgot everything; the model must too
            return chunks


def _tick() -> None:
    try:
        model.apply_due()
        ddb_model.sweep(model.now())
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
    prices_model.install()
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
