"""The nodes of the Ray cluster at RAY_ADDRESS as openmaker shows them (`openmaker cluster`, the
console's capacity page): what each offers, has free and runs, or why the cluster cannot say.
Ray loads at the first call (a second or more), never at import."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING

from openmaker.settings import Settings

if TYPE_CHECKING:
    from openmaker.training.ray_cluster import Node


class ClusterUnreachable(Exception):
    """No answer from the cluster, said for a person."""


def cluster_nodes(settings: Settings) -> list[Node]:
    """Every node the cluster knows, alive or not, with the openmaker hosts and the endpoints'
    and transform jobs' instances running there."""
    try:
        from openmaker.serving.ray_instances import running_instances
        from openmaker.training.ray_cluster import nodes  # loads Ray

        found = nodes(settings)
        held = running_instances()
        return [
            dataclasses.replace(
                node, instances=sorted(held.get(node.node_id, []), key=lambda i: i["instance"])
            )
            for node in found
        ]
    except ImportError:
        raise ClusterUnreachable("Ray is not installed here (pip install ray)") from None
    except Exception as exc:  # Ray's own errors: no cluster there, a refused connection
        where = settings.ray_address or "auto"
        raise ClusterUnreachable(f"cannot reach the Ray cluster at {where}: {exc}") from None


def cluster_nodes_within(settings: Settings) -> list[Node]:
    """`cluster_nodes`, but ClusterUnreachable once `ray_answer_seconds` pass without an answer
    (Ray retries an address where nothing answers for minutes, saying nothing)."""
    asked: Future[list[Node]] = Future()
    # A daemon thread: one stuck in Ray never holds the process's exit.
    threading.Thread(target=answer, args=(asked, settings), name="ray-nodes", daemon=True).start()
    try:
        return asked.result(timeout=settings.ray_answer_seconds)
    except TimeoutError:
        raise ClusterUnreachable(no_answer(settings)) from None


def answer(asked: Future[list[Node]], settings: Settings) -> None:
    """Settle `asked` with the cluster's nodes or the reason there are none."""
    try:
        asked.set_result(cluster_nodes(settings))
    except Exception as exc:  # told to whoever waits for it
        asked.set_exception(exc)


def no_answer(settings: Settings) -> str:
    where = settings.ray_address or "auto"
    return (
        f"the Ray cluster at {where} has not answered in {settings.ray_answer_seconds:g} seconds:"
        " is RAY_ADDRESS right, and the cluster up?"
    )


def instance_label(held: dict[str, str]) -> str:
    """An instance as `openmaker cluster` shows it: whose ("endpoint <name>/<variant>/<id>",
    "transform job <name>/<id>") and what it holds on its node."""
    if held["kind"] == "endpoint" and held["variant"]:
        whose = f"endpoint {held['name']}/{held['variant']}/{held['id']}"
    else:
        whose = f"{held['kind']} {held['name']}/{held['id']}"
    return f"{whose} {held['holds']}".strip()
