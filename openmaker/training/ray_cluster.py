"""The Ray cluster openmaker places hosts on (RAY_ADDRESS): connecting, and what its nodes
offer and run (`openmaker cluster`)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from openmaker.instances import GIB
from openmaker.settings import Settings

# Ray's resources that are no instance's: its own bookkeeping.
_RAY_OWN = ("node:", "object_store_memory", "accelerator_type:")


_joining = threading.Lock()
# What ray.util.serialization_addons.apply imports (Ray 2.60), where installed.
_FIRST_CALL_MODULES = (
    "ray.util.serialization_addons",
    "ray._common.pydantic_compat",
    "ray._private.arrow_serialization",
    "pydantic.fields",
    "pydantic.v1.fields",
    "starlette.datastructures",
)


def connect_soon(settings: Settings) -> None:
    """Start loading Ray and joining the cluster (a second or two) in the background: a later
    `connect` waits for it, or does it if it failed."""

    def join() -> None:
        try:
            connect(settings)
        except Exception as exc:  # told again by the connect that needs it
            print(f"could not join the Ray cluster yet: {exc}")

    threading.Thread(target=join, name="ray-connect", daemon=True).start()


def load() -> None:
    """Load Ray (a second or more), as a job's worker needs it: what the worker uses of it
    before it joins the cluster. Loading it starts no thread, opens no file and takes no signal
    (strace: only sockets probed and closed at once), so the fork server loads it before it
    forks (tests/test_ray_start.py)."""
    # Ray's crash handler would also take SIGTERM, ending the process where a job's worker
    # turns SIGTERM into a stop of its hosts. (Read when Ray loads.)
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    import ray
    import ray._private.state
    import ray.util.placement_group
    import ray.util.scheduling_strategies  # noqa: F401

    # What Ray imports at a process's first call (its serializers' add-ons; 0.3 s): here too.
    for module in _FIRST_CALL_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def connect(settings: Settings) -> None:
    """Join the cluster as a client process of its own (once per process)."""
    load()
    with _joining:
        import ray

        if ray.is_initialized():
            return
        _init(settings)


def _init(settings: Settings) -> None:
    import ray

    ray.init(
        address=settings.ray_address or "auto",
        namespace="openmaker",
        log_to_driver=False,
        logging_level=logging.WARNING,
        configure_logging=False,
    )


def describe_bundle(bundle: dict[str, float]) -> str:
    parts = []
    for name, amount in bundle.items():
        if name == "memory":
            parts.append(f"{amount / GIB:.4g} GiB memory")
        elif name in ("CPU", "GPU"):
            parts.append(f"{amount:g} {name}{'s' if amount != 1 else ''}")
        else:
            parts.append(f"{amount:g} × {name}")
    return "(" + ", ".join(parts) + ")"


def nodes_fitting(bundle: dict[str, float]) -> int:
    """How many live nodes have `bundle` free now."""
    from ray._private import state

    free = state.available_resources_per_node()  # type: ignore[no-untyped-call]
    alive = {node["NodeID"] for node in live_nodes() if node["Alive"]}
    return sum(
        1
        for node, offered in free.items()
        if node in alive and all(offered.get(k, 0) >= v for k, v in bundle.items())
    )


@dataclass(frozen=True)
class Node:
    address: str
    node_id: str
    alive: bool
    offers: dict[str, float]  # what it has in all
    free: dict[str, float]
    # The openmaker hosts running there: "job/algo-N".
    hosts: list[str]
    # The endpoints' and transform jobs' instances running there (serving/ray_agent.py
    # `instances`): kind, name, variant, id, holds.
    instances: list[dict[str, str]] = field(default_factory=list)


def nodes(settings: Settings) -> list[Node]:
    from ray._private import state

    connect(settings)
    free = state.available_resources_per_node()  # type: ignore[no-untyped-call]
    from openmaker.training.ray_hosts import running_hosts  # (it imports this module)

    running = running_hosts()
    return [
        Node(
            address=node["NodeManagerAddress"],
            node_id=node["NodeID"],
            alive=bool(node["Alive"]),
            offers=_own(node["Resources"]),
            free=_own(free.get(node["NodeID"], {})),
            hosts=sorted(running.get(node["NodeID"], [])),
        )
        for node in live_nodes()
    ]


def _own(resources: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in resources.items() if not k.startswith(_RAY_OWN)}


def live_nodes() -> list[dict[str, Any]]:
    import ray

    return list(ray.nodes())  # type: ignore[no-untyped-call]
