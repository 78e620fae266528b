"""The peer of the API benchmark: an HTTP server that answers every SageMaker JSON request with
a canned body, checking nothing and reading no database. What boto3 and HTTP cost by themselves.

    python -m bench.floor_server PORT CANNED.json   (CANNED: {"Operation": response, ...})
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openmaker.api.server import http_config


def app_for(canned: dict[str, object]) -> Starlette:
    bodies = {name: json.dumps(body).encode() for name, body in canned.items()}

    async def answer(request: Request) -> Response:
        await request.body()
        operation = request.headers.get("x-amz-target", "").partition(".")[2]
        return Response(bodies.get(operation, b"{}"), media_type="application/x-amz-json-1.1")

    return Starlette(routes=[Route("/", answer, methods=["POST"])])


if __name__ == "__main__":
    port, canned_file = int(sys.argv[1]), Path(sys.argv[2])
    # The server's own HTTP setup, so that the ratio is the cost of its work alone.
    app = app_for(json.loads(canned_file.read_text()))
    uvicorn.Server(http_config(app, "127.0.0.1", port)).run()
