"""Pinging the serving instances after their first healthy ping, as SageMaker keeps doing.

A container can stay alive and stop answering (a deadlock, a stuck GPU call): only its pings
tell. Every `every` seconds each instance in the rotation gets `GET /ping` (PING_SECONDS to
answer 200, all pinged at once); one that fails FAILURES pings in a row is reported by
`failing`, for the endpoint's worker to take it out of the rotation and replace its container
(serving/worker.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from openmaker.serving.instance import PING_SECONDS, Instance

# Failed pings in a row that take an instance out of the rotation.
FAILURES = 3
# Instances pinged at once, at most.
PINGERS = 16


class HealthWatch:
    def __init__(self, every: float, instances: Callable[[], list[Instance]]) -> None:
        self.every, self.instances = every, instances
        self._failed: dict[str, int] = {}  # instance id: pings failed in a row
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="health-watch", daemon=True)

    def start(self) -> HealthWatch:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=PING_SECONDS * 2)

    def failing(self, instance: Instance) -> str | None:
        """Why the instance must leave the rotation (None: it need not)."""
        with self._lock:
            failed = self._failed.get(instance.plan.id, 0)
        if failed < FAILURES:
            return None
        return (
            f"its container is running but did not answer GET /ping with 200 within "
            f"{PING_SECONDS:g} seconds {failed} times in a row"
        )

    def forget(self, instance: Instance) -> None:
        """The instance starts afresh (its container replaced): its failures are forgotten."""
        with self._lock:
            self._failed.pop(instance.plan.id, None)

    def _loop(self) -> None:
        with ThreadPoolExecutor(PINGERS, thread_name_prefix="ping") as pool:
            while not self._stop.wait(self.every):
                # Those in the rotation only: one starting is pinged by the worker.
                watched = [i for i in self.instances() if i.ready]
                answers = list(pool.map(_answers, watched))
                with self._lock:
                    for instance, answered in zip(watched, answers, strict=True):
                        if answered or not instance.ready:  # replaced meanwhile
                            self._failed.pop(instance.plan.id, None)
                        else:
                            self._failed[instance.plan.id] = (
                                self._failed.get(instance.plan.id, 0) + 1
                            )


def _answers(instance: Instance) -> bool:
    container = instance.container
    # One whose container ended is the worker's to restart, not this watch's.
    return container is None or container.poll() is not None or instance.healthy()
