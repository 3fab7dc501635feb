"""What the tests run against: the real relay binary, and a runner (a
real HTTP server on a loopback port) that records what the relay sends."""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from django.db import connection

REPO = Path(__file__).resolve().parents[4]


def relay_binary():
    """The relay binary make test-django built (OUTBOX_RELAY_BIN, else the
    repository's bin/outbox-relay)."""
    path = Path(os.environ.get("OUTBOX_RELAY_BIN") or REPO / "bin" / "outbox-relay")
    if not path.is_file():
        raise AssertionError(f"relay binary {path} not found: run make build (make test-django does)")
    return str(path)


def database_url():
    """The URL of the database the tests use (the test database)."""
    s = connection.settings_dict
    return "postgres://{}:{}@{}:{}/{}?sslmode=disable".format(
        quote(s["USER"], safe=""), quote(s["PASSWORD"], safe=""), s["HOST"], s["PORT"], quote(s["NAME"], safe=""))


def wait_for(what, condition, timeout=30.0):
    """Poll condition until it returns something true, and return that;
    fail naming what was awaited once timeout seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class Runner:
    """A runner on 127.0.0.1: it records each request (headers and JSON
    body) and answers with answer(body) (a status code; 204 by default)."""

    def __init__(self, answer=None):
        self.answer = answer or (lambda body: 204)
        self.requests = []
        self._lock = threading.Lock()
        runner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with runner._lock:
                    runner.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                self.send_response(runner.answer(body))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/events"

    def received(self):
        with self._lock:
            return list(self.requests)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def relay_env(*settings):
    """The relay's environment: this process's, less any RELAY_ setting,
    plus settings ("NAME=value")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(s.split("=", 1) for s in settings)
    return env


def run_relay_command(*args, env):
    """Run a relay command to its end: (exit code, stdout, stderr)."""
    done = subprocess.run([relay_binary(), *args], env=env, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


class Relay:
    """`outbox-relay run` as a child process; its log goes to a file that
    a failing test prints."""

    def __init__(self, env):
        self.log = tempfile.NamedTemporaryFile(prefix="outbox-relay-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([relay_binary(), "run"], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self):
        return Path(self.log.name).read_text()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.log.close()
        os.unlink(self.log.name)


@contextmanager
def opentelemetry_stand_in(traceparent, tracestate=""):
    """OpenTelemetry is not among the Debian packages the tests install:
    this stands in for the one name publish() imports from it, the W3C
    propagator of opentelemetry-api, injecting a fixed span's context."""
    name = "opentelemetry.trace.propagation.tracecontext"
    module = types.ModuleType(name)

    class TraceContextTextMapPropagator:
        def inject(self, carrier):
            carrier["traceparent"] = traceparent
            if tracestate:
                carrier["tracestate"] = tracestate

    module.TraceContextTextMapPropagator = TraceContextTextMapPropagator
    modules = {n: types.ModuleType(n) for n in ("opentelemetry", "opentelemetry.trace", "opentelemetry.trace.propagation")}
    modules[name] = module
    saved = {n: sys.modules.get(n) for n in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                del sys.modules[n]
            else:
                sys.modules[n] = m
