"""The entry point of a worker process (`python -m openmaker.jobs.worker_process`).

SIGTERM is caught before anything heavy is imported: a stop asked for while the worker is still
starting is then never lost, and never kills the worker before it can record the job's end.
"""

import signal
import threading

stop_before_start = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop_before_start.set())


def main() -> None:
    from openmaker.training.worker import main as run_worker

    run_worker(stop_before_start)


if __name__ == "__main__":
    main()
