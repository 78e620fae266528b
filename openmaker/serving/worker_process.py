"""The entry point of an endpoint's worker (`python -m openmaker.serving.worker_process`).

SIGTERM (DeleteEndpoint) is caught before anything heavy is imported, so that a delete asked for
while the worker starts is never lost.
"""

import signal
import threading

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())


def main() -> None:
    from openmaker.serving.worker import main as run_worker

    run_worker(stop)


if __name__ == "__main__":
    main()
