"""Running one container: a copy-on-write root filesystem, explicit binds, its environment,
argv, working folder, hostname and network, held to its limits; started, signalled, stopped
with a grace period, its output delivered as lines. It knows nothing of what the container is
for: training (openmaker/training/host/container.py) says what it binds and runs.
"""

from openmaker.runtime.container import Container
from openmaker.runtime.sandbox import unavailable_reason
from openmaker.runtime.spec import Bind, ContainerSpec, Limits

__all__ = ["Bind", "Container", "ContainerSpec", "Limits", "unavailable_reason"]
