"""An endpoint's statuses (EndpointStatus in the model), and which of them hold instances."""

from __future__ import annotations

CREATING = "Creating"
IN_SERVICE = "InService"
UPDATING = "Updating"
DELETING = "Deleting"
FAILED = "Failed"

# A worker runs (or starts) the endpoint's instances.
ACTIVE = frozenset({CREATING, IN_SERVICE, UPDATING, DELETING})
# No worker, and none will come: only DeleteEndpoint changes it.
ENDED = frozenset({FAILED})
