"""The nodes of the Ray cluster at RAY_ADDRESS as openmaker shows them (`openmaker cluster`, the
console's capacity page): what each offers, has free and runs, or why the cluster cannot say.
Ray loads at the first call (a second or more), never at import."""

from __future__ import annotations

from typing import TYPE_CHECKING

from openmaker.settings import Settings

if TYPE_CHECKING:
    from openmaker.training.ray_cluster import Node


class ClusterUnreachable(Exception):
    """No answer from the cluster, said for a person."""


def cluster_nodes(settings: Settings) -> list[Node]:
    """Every node the cluster knows, alive or not, with the openmaker hosts running there."""
    try:
        from openmaker.training.ray_cluster import nodes  # loads Ray

        return nodes(settings)
    except ImportError:
        raise ClusterUnreachable("Ray is not installed here (pip install ray)") from None
    except Exception as exc:  # Ray's own errors: no cluster there, a refused connection
        where = settings.ray_address or "auto"
        raise ClusterUnreachable(f"cannot reach the Ray cluster at {where}: {exc}") from None
