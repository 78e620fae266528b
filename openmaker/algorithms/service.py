"""CreateAlgorithm, DescribeAlgorithm, ListAlgorithms, DeleteAlgorithm.

An algorithm is its request, kept (Tags aside), with its status: `Completed` at once when it
names no validation profiles, else `Pending` until validation.py has run them.
"""

from __future__ import annotations

import builtins
import copy
from typing import Any

from sqlalchemy import select

from openmaker.algorithms.checks import check_algorithm
from openmaker.algorithms.digests import Digests, inference_images, training_image
from openmaker.algorithms.store import Store, find
from openmaker.jobs.db import AlgorithmRecord, Tag
from openmaker.jobs.service import add_tagged
from openmaker.serving.clock import as_utc, now
from openmaker.serving.listing import page
from openmaker.shapes.errors import ValidationException
from openmaker.shapes.locations import LocalPaths
from openmaker.shapes.validate import error_message

PENDING, IN_PROGRESS, COMPLETED, FAILED = "Pending", "InProgress", "Completed", "Failed"


class Algorithms:
    def __init__(self, store: Store, local: LocalPaths | None = None) -> None:
        self.store = store
        self.local = local or LocalPaths.anywhere()

    def create(self, request: dict[str, Any]) -> dict[str, str]:
        check_algorithm(request, self.local)
        name = request["AlgorithmName"]
        arn = self.store.arn("algorithm", name)
        profiles = (request.get("ValidationSpecification") or {}).get("ValidationProfiles") or []
        kept = {k: copy.deepcopy(v) for k, v in request.items() if k != "Tags"}
        # Last: it may ask a registry. The kept request gets the digests (Describe shows them).
        images = [training_image(kept["TrainingSpecification"]), *inference_images(kept)]
        if problems := list(Digests(self.store.settings).fill(images)):
            raise ValidationException(error_message(problems))
        record = AlgorithmRecord(
            name=name,
            arn=arn,
            request=kept,
            status=PENDING if profiles else COMPLETED,
            validation=[{"Name": p["ProfileName"], "Status": "NotStarted"} for p in profiles],
            creation_time=now(),
        )
        with self.store.writers() as session:
            add_tagged(session, record, arn, request.get("Tags") or [], "algorithm")
        return {"AlgorithmArn": arn}

    def get(self, name_or_arn: str, member: str = "AlgorithmName") -> AlgorithmRecord:
        with self.store.sessions() as session:
            found = find(session, AlgorithmRecord, name_or_arn)
        if found is None:
            raise ValidationException(f"{member}: no algorithm {name_or_arn} exists")
        return found

    def describe(self, name_or_arn: str) -> dict[str, Any]:
        algorithm = self.get(name_or_arn)
        details: dict[str, Any] = {}
        if algorithm.validation:
            # What validation.py keeps beside each status is its own.
            details["ValidationStatuses"] = [
                {k: s[k] for k in ("Name", "Status", "FailureReason") if k in s}
                for s in algorithm.validation
            ]
        return {
            **algorithm.request,
            "AlgorithmArn": algorithm.arn,
            "CreationTime": as_utc(algorithm.creation_time),
            "AlgorithmStatus": algorithm.status,
            "AlgorithmStatusDetails": details,
        }

    def list(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.store.sessions() as session:
            rows = list(session.scalars(select(AlgorithmRecord)))
        return page("ListAlgorithms", params, rows, _summary, "AlgorithmSummaryList")

    def delete(self, name: str) -> None:
        with self.store.writers() as session:
            algorithm = find(session, AlgorithmRecord, name)
            if algorithm is None:
                raise ValidationException(f"AlgorithmName: no algorithm {name} exists")
            session.delete(algorithm)
            session.query(Tag).filter(Tag.resource_arn == algorithm.arn).delete()
            session.commit()

    def validating(self) -> builtins.list[str]:
        """The algorithms whose validation has not ended."""
        with self.store.sessions() as session:
            query = select(AlgorithmRecord.name).where(
                AlgorithmRecord.status.in_((PENDING, IN_PROGRESS))
            )
            return list(session.scalars(query))

    def record_validation(
        self, name: str, status: str, statuses: builtins.list[dict[str, Any]]
    ) -> None:
        """The algorithm `name`'s validation has gone this far (validation.py)."""
        with self.store.writers() as session:
            algorithm = session.get(AlgorithmRecord, name)
            if algorithm is not None:
                algorithm.status, algorithm.validation = status, statuses
                session.commit()


def _summary(algorithm: AlgorithmRecord) -> dict[str, Any]:
    summary = {
        "AlgorithmName": algorithm.name,
        "AlgorithmArn": algorithm.arn,
        "CreationTime": as_utc(algorithm.creation_time),
        "AlgorithmStatus": algorithm.status,
    }
    if algorithm.request.get("AlgorithmDescription"):
        summary["AlgorithmDescription"] = algorithm.request["AlgorithmDescription"]
    return summary
