"""`openmaker server`: the API and the S3 gate (the embedded store's endpoint), in one process.

Jobs run in their own worker processes: they go on when the server stops, and a server started
again sees them where they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

import uvicorn
import uvloop
from starlette.applications import Starlette

from openmaker.api.app import create_app
from openmaker.api.coalesce import CoalescingHttpToolsProtocol
from openmaker.api.credentials import Credentials, server_credentials
from openmaker.api.invoke_front import protocol_for
from openmaker.api.operations import Backend
from openmaker.api.runtime import Invocations, Receive, Scope, Send
from openmaker.api.s3_endpoint import embedded_s3
from openmaker.connection import ServerRecord, remove_record, write_record
from openmaker.jobs import gate_keys
from openmaker.settings import Settings, StoreSettings

# How often keys whose worker was killed (and could not revoke them) are looked for.
ORPHAN_KEY_SWEEP_SECONDS = 2.0


def serve(
    settings: Settings,
    host: str,
    port: int,
    s3_port: int,
    announce: Callable[[ServerRecord, StoreSettings], None],
) -> None:
    """Run until interrupted (SIGINT or SIGTERM). `announce(record, store)` is called once both
    endpoints listen."""
    credentials = server_credentials(settings)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Where the nodes of a Ray cluster reach the embedded store, when it is not --host.
    s3_host = settings.advertise_address or host
    with _store_endpoint(settings, credentials, s3_host, s3_port) as (s3_url, settings):
        # The jobs get the store as the server serves it to them (its gate), in their settings.
        backend = Backend(settings)
        backend.watch()
        invocations = Invocations(
            credentials, settings.region, settings.account_id, backend.invoker
        )
        app = _InvocationsFirst(create_app(backend, credentials), invocations)
        server = _Server(http_config(app, host, port, protocol_for(invocations)))
        record = ServerRecord(
            f"http://{host}:{port}",
            s3_url,
            os.getpid(),
            credentials.access_key_id,
            settings.gate_url,
        )
        try:
            # uvloop: its loop and transports cost a fraction of asyncio's own per request
            # (bench/invoke.py).
            with (
                _orphan_key_sweeper(settings, backend.jobs.worker_lost),
                asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
            ):
                runner.run(_serve(server, lambda: _started(settings, record, announce)))
        finally:
            backend.close()
            remove_record(settings)


class _InvocationsFirst:
    """The API, with InvokeEndpoint requests taken straight to their handler (the same one the
    API's route has) before the framework's routing and middleware see them."""

    def __init__(self, app: Starlette, invocations: Invocations) -> None:
        self.app, self.invocations = app, invocations

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and Invocations.endpoint_of(scope) is not None:
            await self.invocations(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def http_config(
    app: Starlette | _InvocationsFirst,
    host: str,
    port: int,
    protocol: type[CoalescingHttpToolsProtocol] = CoalescingHttpToolsProtocol,
) -> uvicorn.Config:
    """uvicorn as the API serves: the head and body of an answer in one write
    (openmaker/api/coalesce.py), plain invocations answered by the protocol itself when it is
    openmaker/api/invoke_front.py's; no access log; no X-Forwarded-* rewriting (no proxy stands
    in front, and nothing reads the client's address); no `server` header (AWS's answers name
    no server, and every client would parse it)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )


def _started(
    settings: Settings,
    record: ServerRecord,
    announce: Callable[[ServerRecord, StoreSettings], None],
) -> None:
    write_record(settings, record)
    announce(record, settings.store)


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
) -> Iterator[tuple[str | None, Settings]]:
    """The S3 gate for the jobs' code; yields the embedded store's endpoint (the gate, which
    also takes the server's key), or None when an S3 server is configured: clients use that
    server directly, and a gate (when asked for) takes the jobs' keys alone. With it, the
    settings for the server's jobs: the gate their code reaches the store through, or whether
    the S3 server's credentials are kept from their code.

    openmaker's own transfers for the jobs go to the store directly (the embedded store's
    folder, or the S3 server with its credentials), without the gate's cost.
    """
    upstream = settings.s3_endpoint
    if upstream is not None and not settings.s3_gate:
        # Without a gate, the S3 server's credentials reach the jobs' code (README): never
        # when they are the key pair that signs this server's API.
        own = upstream.access_key_id == credentials.access_key_id
        yield None, replace(settings, code_without_s3_credentials=own)
        return
    with embedded_s3(settings, credentials, host, port, upstream) as url:
        # The jobs' workers get the gate's address, never a key that reaches more than a
        # job's places: each makes a key of its job's own (openmaker.jobs.gate_keys).
        yield (url if upstream is None else None), replace(settings, gate_url=url)


@contextlib.contextmanager
def _orphan_key_sweeper(
    settings: Settings, worker_lost: Callable[[int, int | None], bool]
) -> Iterator[None]:
    """Revoke, every few seconds, the keys of jobs whose worker died before revoking them
    (whether a worker is gone is the jobs layer's `worker_lost`). Keys are minted only for
    jobs that reach the store through the gate."""
    if settings.gate_url is None:
        yield
        return
    done = threading.Event()

    def sweep() -> None:
        while not done.wait(ORPHAN_KEY_SWEEP_SECONDS):
            try:
                gate_keys.revoke_orphans(settings.home, worker_lost)
            except OSError:
                logging.getLogger(__name__).exception("sweeping the keys of lost jobs")

    thread = threading.Thread(target=sweep, name="orphan-keys", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
