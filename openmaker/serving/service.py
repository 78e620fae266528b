"""The serving resources behind one door: models, endpoint configurations, endpoints."""

from __future__ import annotations

from openmaker.jobs.db import sessions, writer_sessions
from openmaker.serving.configs import EndpointConfigs
from openmaker.serving.endpoints import Endpoints
from openmaker.serving.models import Models
from openmaker.settings import Settings
from openmaker.shapes.locations import LocalPaths


class Serving:
    def __init__(self, settings: Settings, local: LocalPaths | None = None) -> None:
        reads, writes = sessions(settings), writer_sessions(settings)
        self.models = Models(
            reads, writes, settings.region, settings.account_id, local or LocalPaths.anywhere()
        )
        self.configs = EndpointConfigs(settings, reads, writes)
        self.endpoints = Endpoints(settings, reads, writes, self.models, self.configs)


# The tables of the resources here that are not jobs, by the resource type in their ARNs: for
# the tag operations (openmaker/jobs/tags.py).
def taggable() -> dict[str, type]:
    from openmaker.jobs.db import EndpointConfigRecord, ModelRecord

    return {"model": ModelRecord, "endpoint-config": EndpointConfigRecord}
