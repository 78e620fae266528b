"""The capacity page's Ray cluster (OPENMAKER_EXECUTOR=ray): each node, what it offers and has
free, and the hosts and instances it runs, as `openmaker cluster` shows them
(training/cluster_nodes.py).

Asked in a thread of its own, waited for in the server's thread pool, never on its event loop:
Ray loads at the first ask (a second or two), and an unreachable cluster can take minutes to say
so. A cluster that cannot be asked is a message on the page, not an error.
"""

from __future__ import annotations

import ipaddress
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from openmaker.instances import GIB
from openmaker.settings import Settings
from openmaker.training.cluster_nodes import ClusterUnreachable, answer, no_answer

if TYPE_CHECKING:
    from openmaker.training.ray_cluster import Node

# What the page shows in columns of their own; the rest (the instance types a node stands for,
# custom resources) goes in one column, as Ray names them.
_SHOWN = ("CPU", "memory", "GPU")


class ClusterView:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        # The question to the cluster under way, or the last one answered: pages polling
        # together wait for the same one, and one that hangs is never asked again beside it.
        self._asked: Future[list[Node]] | None = None

    def read(self) -> dict[str, Any]:
        if self.settings.executor != "ray":
            return {"executor": self.settings.executor}
        where = self.settings.ray_address or "auto"
        shown: dict[str, Any] = {"executor": "ray", "address": where, "nodes": []}
        try:
            # Pages polling later wait for the same ask, still under way.
            found = self._ask().result(timeout=self.settings.ray_answer_seconds)
        except ClusterUnreachable as exc:
            return shown | {"problem": str(exc)}
        except TimeoutError:
            return shown | {"problem": no_answer(self.settings)}
        return shown | {"problem": None, "nodes": [_node(n) for n in sorted(found, key=_address)]}

    def _ask(self) -> Future[list[Node]]:
        with self._lock:
            if self._asked is None or self._asked.done():
                self._asked = Future()
                # A daemon thread: one stuck in Ray never holds the server's exit.
                threading.Thread(
                    target=answer, args=(self._asked, self.settings), name="ray-nodes", daemon=True
                ).start()
            return self._asked


def _node(node: Node) -> dict[str, Any]:
    return {
        "address": node.address,
        "nodeId": node.node_id,
        "alive": node.alive,
        "offers": _amounts(node.offers),
        "free": _amounts(node.free) if node.alive else None,
        # The instance types it stands for (what openmaker places hosts by), used of offered.
        "other": [
            {"name": k, "offers": v, "free": node.free.get(k, 0) if node.alive else None}
            for k, v in node.offers.items()
            if k not in _SHOWN
        ],
        "hosts": node.hosts,
        # The endpoints' and transform jobs' instances: kind, name, variant, id, holds.
        "instances": [
            {k: i[k] for k in ("kind", "name", "variant", "id", "holds")} for i in node.instances
        ],
    }


def _address(node: Node) -> tuple[int, int, str]:
    """Nodes in the order of their addresses, by number."""
    try:
        found = ipaddress.ip_address(node.address)
    except ValueError:
        return (7, 0, node.address)
    return (found.version, int(found), "")


def _amounts(bundle: dict[str, float]) -> dict[str, float]:
    return {
        "cpus": bundle.get("CPU", 0),
        "memoryGiB": round(bundle.get("memory", 0) / GIB, 2),
        "gpus": bundle.get("GPU", 0),
    }
