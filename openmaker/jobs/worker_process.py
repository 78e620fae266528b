"""The entry point of a worker process (`python -m openmaker.jobs.worker_process [RUNNER
[EXECUTOR]]`).

It reads its order (openmaker/jobs/executor.py) on its standard input and hands it to the
module that runs the order's kind of job (`run(order, settings, stop_before_start)`). RUNNER is
the module it expects to need: a spare worker loads it while it waits for its order, and what
the runner needs under EXECUTOR (its `preload(executor)`). A worker
forked by the fork server (openmaker/jobs/forkserver.py) has its modules loaded already and
runs `run_message` on what it reads.

SIGTERM is caught before anything heavy is imported: a stop asked for while the worker is still
starting is then never lost, and never kills the worker before it can record the job's end.
"""

import signal
import threading
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from openmaker.jobs.executor import Runner

stop_before_start = threading.Event()


def catch_stop() -> None:
    """A SIGTERM from now on sets `stop_before_start` (the runner answers it once running)."""
    signal.signal(signal.SIGTERM, lambda *_: stop_before_start.set())


if __name__ == "__main__":
    catch_stop()

# Only openmaker's own modules run orders (the order comes from openmaker's executor).
RUNNERS_UNDER = "openmaker."


def main() -> None:
    import importlib
    import sys

    for expected in sys.argv[1:2]:
        # The runner's own heavy parts (Ray, under OPENMAKER_EXECUTOR=ray) load meanwhile too.
        preload = getattr(runner(expected), "preload", None)
        executor = sys.argv[2] if len(sys.argv) > 2 else "local"
        if preload is not None:
            threading.Thread(target=preload, args=(executor,), daemon=True).start()
    # The database layer loads meanwhile: a spare worker has it ready when its job comes.
    threading.Thread(target=importlib.import_module, args=("openmaker.jobs.db",)).start()
    data = sys.stdin.read()
    if not data:
        return  # a spare nobody needed
    run_message(data)


def run_message(data: str) -> None:
    """Run the order `data` (its JSON, with the submitter's settings) to its end."""
    import json
    import os

    from openmaker.jobs import db
    from openmaker.jobs.executor import Order
    from openmaker.settings import from_json

    message = json.loads(data)
    order = Order.from_json(message)
    settings = from_json(message["settings"])
    db.schema_is_current(settings.database_url)  # its submitter's engine checked it
    # The worker's own messages (not the job's logs) go to a file, for post-mortems.
    log = os.open(
        settings.jobs_dir / order.folder / "worker.log",
        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
        0o600,
    )
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    runner(order.runner).run(order, settings, stop_before_start)


def runner(name: str) -> "Runner":
    import importlib

    if not name.startswith(RUNNERS_UNDER):
        raise SystemExit(f"not a runner of openmaker's: {name}")
    return cast("Runner", importlib.import_module(name))


if __name__ == "__main__":
    main()
