"""The transform invoker against a real listener that takes a request and never answers nor
closes (as a container killed together with its network leaves it): a stop must end the
request at once, not at `InvocationsTimeoutInSeconds`."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from openmaker.transform.invoker import Aborted, Invocation, Invoker


@pytest.fixture
def silent() -> Iterator[tuple[str, threading.Event]]:
    listener = socket.create_server(("127.0.0.1", 0))
    taken = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            held.append(connection)  # read nothing, answer nothing, close nothing
            taken.set()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}", taken
    finally:
        listener.close()
        for connection in held:
            connection.close()


def test_an_abort_ends_a_request_the_container_never_answers(
    silent: tuple[str, threading.Event],
) -> None:
    address, taken = silent
    invoker = Invoker(address, Invocation("text/csv", None, timeout=600, retries=3))
    outcome: list[BaseException] = []

    def post() -> None:
        try:
            invoker.invoke(b"1,2\n")
        except BaseException as exc:  # the outcome is what the test reads
            outcome.append(exc)

    poster = threading.Thread(target=post, daemon=True)
    poster.start()
    assert taken.wait(10), "the request never reached the listener"
    time.sleep(0.2)  # the request is sent; its thread waits for the answer
    invoker.abort()
    poster.join(10)
    assert not poster.is_alive(), "the request still waits after the abort"
    assert len(outcome) == 1 and isinstance(outcome[0], Aborted)
    # Nothing is posted after an abort, not even a first attempt.
    with pytest.raises(Aborted):
        invoker.invoke(b"3,4\n")
