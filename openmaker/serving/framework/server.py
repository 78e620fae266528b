"""The stand-in model server a framework image's instance runs on 8080, inside its sandbox:
`python -m openmaker.serving.framework.server FRAMEWORK`.

At start it installs the code folder's requirements.txt with pip into the container's own
(copy-on-write) environment, imports the entry point and calls model_fn; it listens only once
the model is loaded, so /ping answers 200 when invocations can be served. Anything failing at
start ends the process with the reason in the instance's log. Then:
- GET /ping: 200.
- POST /invocations: Content-Type (application/json when absent) and Accept (the first of
  several; when absent or `*/*`, SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT, else application/json)
  go to the handlers; one invocation at a time, as one model server worker. A content type
  the default handlers cannot take is a 415; an exception of a handler a 500 carrying its
  message (the traceback goes to the log).
- GET /execution-parameters: what a batch transform may send at once.
With SAGEMAKER_MULTI_MODEL=true (a multi-model endpoint) no model is loaded at start: models
come and go through the multi-model API (multi_model.py), each invoked at
`POST /models/<name>/invoke`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from openmaker.serving.framework import codecs, multi_model
from openmaker.serving.framework.handlers import DEFAULT_PROGRAM, Handlers, load_module
from openmaker.serving.framework.paths import FETCHED_CODE_DIR, MODEL_DIR

PORT = 8080
EXECUTION_PARAMETERS = {"MaxConcurrentTransforms": 1, "BatchStrategy": "MULTI_RECORD",
                        "MaxPayloadInMB": 6}  # fmt: skip


class StartError(Exception):
    """The server cannot start; the message says why, for a person."""


def code_dir() -> Path:
    """The entry point's folder: SAGEMAKER_SUBMIT_DIRECTORY when it is a folder of the
    container (/opt/ml/model/code, as the SDK sets it for a repacked model), the fetched one
    when it named S3, else the model's own code/ folder."""
    given = os.environ.get("SAGEMAKER_SUBMIT_DIRECTORY", "")
    if given.startswith("/") and Path(given).is_dir():
        return Path(given)
    if given.startswith("s3://") and Path(FETCHED_CODE_DIR).is_dir():
        return Path(FETCHED_CODE_DIR)
    return Path(MODEL_DIR) / "code"


def install_requirements(folder: Path) -> None:
    requirements = folder / "requirements.txt"
    if not requirements.is_file():
        return
    print(f"installing {requirements} with pip", flush=True)
    argv = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    argv += ["--retries", "0", "--timeout", "15", "-r", str(requirements)]
    done = subprocess.run(argv, check=False)
    if done.returncode != 0:
        raise StartError(
            f"the packages of {requirements} could not be installed (pip ended with status "
            f"{done.returncode}; its messages are above). Without access to a package index "
            "(offline), install them on this machine instead, or leave them out of "
            "requirements.txt"
        )


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, handlers: Handlers | None, registry: multi_model.Registry | None, port: int
    ) -> None:
        super().__init__(("0.0.0.0", port), Request)
        self.handlers, self.registry = handlers, registry
        self.lock = threading.Lock()


class Request(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body go out as two writes: with Nagle's algorithm the body waited for
    # the client's delayed ACK of the head, 40 ms an answer (bench/invoke.py).
    disable_nagle_algorithm = True
    server: Server

    def do_GET(self) -> None:
        registry, model = self.server.registry, self._model()
        if self.path == "/ping":
            self._send(200, b"", "text/plain")
        elif self.path == "/execution-parameters":
            self._send(200, json.dumps(EXECUTION_PARAMETERS).encode(), codecs.JSON)
        elif registry is not None and self.path == "/models":
            self._reply(registry.listing())
        elif registry is not None and model is not None and "/" not in model:
            self._reply(registry.listing(model))
        else:
            self._send(404, b"Not Found\n", "text/plain")

    def do_DELETE(self) -> None:
        registry, model = self.server.registry, self._model()
        if registry is not None and model is not None and "/" not in model:
            self._reply(registry.unload(model))
        else:
            self._send(404, b"Not Found\n", "text/plain")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        registry, model = self.server.registry, self._model()
        handlers = self.server.handlers
        if registry is not None and self.path == "/models":
            self._reply(registry.load(body))
            return
        if registry is not None and model is not None and model.endswith("/invoke"):
            handlers = registry.handlers(model.removesuffix("/invoke"))
            if handlers is None:
                self._send(404, b"Model not loaded\n", "text/plain")
                return
        elif self.path != "/invocations" or handlers is None:
            self._send(404, b"Not Found\n", "text/plain")
            return
        content_type = self.headers.get("Content-Type") or codecs.JSON
        # Of several accepted types, the first is answered in.
        accept = (self.headers.get("Accept") or "*/*").split(",")[0].strip()
        if accept == "*/*":
            accept = os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT") or codecs.JSON
        try:
            with self.server.lock:
                answer = handlers.answer(body, content_type, accept)
        except codecs.UnsupportedFormat as exc:
            self._send(415, f"{exc}\n".encode(), "text/plain")
        except Exception as exc:
            traceback.print_exc()
            self._send(500, f"{type(exc).__name__}: {exc}\n".encode(), "text/plain")
        else:
            self._send(200, answer.body, answer.content_type)

    def _model(self) -> str | None:
        """What follows `/models/` in the path (None: another path)."""
        prefix = "/models/"
        return self.path[len(prefix) :] if self.path.startswith(prefix) else None

    def _reply(self, reply: multi_model.Reply) -> None:
        self._send(reply.status, reply.body, reply.content_type)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would fill the endpoint's log


def main(framework: str) -> int:
    port = int(os.environ.get("SAGEMAKER_BIND_TO_PORT") or PORT)
    program = os.environ.get("SAGEMAKER_PROGRAM") or DEFAULT_PROGRAM
    if os.environ.get(multi_model.ENABLED, "").lower() == "true":
        print(f"{framework} multi-model server (openmaker's stand-in) on {port}", flush=True)
        Server(None, multi_model.Registry(framework, program), port).serve_forever()
        return 0
    folder = code_dir()
    try:
        install_requirements(folder)
        module = load_module(folder, program)
        handlers = Handlers(framework, module)
        handlers.load(MODEL_DIR)
    except StartError as exc:
        print(f"The model server cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:
        traceback.print_exc()
        # The last line: what the endpoint's FailureReason shows (serving/output_tail.py).
        print(
            f"The model server cannot start: loading the model failed: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    print(f"{framework} model server (openmaker's stand-in) listening on {port}", flush=True)
    Server(handlers, None, port).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
