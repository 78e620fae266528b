"""`openmaker server`: the API and the embedded S3 endpoint, in one process.

Jobs run in their own worker processes: they go on when the server stops, and a server started
again sees them where they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator

import uvicorn

from openmaker.api.app import create_app
from openmaker.api.credentials import Credentials, server_credentials
from openmaker.api.operations import Backend
from openmaker.api.s3_endpoint import embedded_s3
from openmaker.config import Settings
from openmaker.connection import ServerRecord, remove_record, write_record
from openmaker.store import s3_endpoint
from openmaker.store.location import (
    EMBEDDED_ENDPOINT_KEY_ID,
    EMBEDDED_ENDPOINT_SECRET,
    EMBEDDED_ENDPOINT_URL,
)


def serve(
    settings: Settings,
    host: str,
    port: int,
    s3_port: int,
    announce: Callable[[ServerRecord], None],
) -> None:
    """Run until interrupted (SIGINT or SIGTERM). `announce(record)` is called once both
    endpoints listen."""
    credentials = server_credentials(settings)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with _store_endpoint(settings, credentials, host, s3_port) as s3_url:
        backend = Backend(settings)
        backend.watch()
        app = create_app(backend, credentials)
        server = _Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        )
        record = ServerRecord(
            f"http://{host}:{port}", s3_url, os.getpid(), credentials.access_key_id
        )
        try:
            asyncio.run(_serve(server, lambda: _started(settings, record, announce)))
        finally:
            backend.close()
            remove_record(settings)


def _started(
    settings: Settings, record: ServerRecord, announce: Callable[[ServerRecord], None]
) -> None:
    write_record(settings, record)
    announce(record)


class _Server(uvicorn.Server):
    """uvicorn, except that SIGINT and SIGTERM end it without killing the process afterwards
    (uvicorn raises the signal again once it has stopped): the embedded S3 endpoint and the
    server record are then cleaned up."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


async def _serve(server: uvicorn.Server, started: Callable[[], None]) -> None:
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task  # it could not start: its error, or its exit
            return
        await asyncio.sleep(0.05)
    started()
    await task


@contextlib.contextmanager
def _store_endpoint(
    settings: Settings, credentials: Credentials, host: str, port: int
) -> Iterator[str | None]:
    """The embedded store as an S3 endpoint, unless an S3 endpoint is configured already.

    The code of the jobs the server runs is given that endpoint; openmaker's own transfers for
    them read and write the store's folder directly, without the endpoint's cost (rclone reads
    every object whole to give its ETag in a listing).
    """
    if s3_endpoint() is not None:
        yield None
        return
    with embedded_s3(settings, credentials, host, port) as url:
        variables = {
            EMBEDDED_ENDPOINT_URL: url,
            EMBEDDED_ENDPOINT_KEY_ID: credentials.access_key_id,
            EMBEDDED_ENDPOINT_SECRET: credentials.secret_access_key,
        }
        os.environ.update(variables)
        try:
            yield url
        finally:
            for name in variables:
                os.environ.pop(name, None)
