"""Model packages: CreateModelPackage, DescribeModelPackage, ListModelPackages,
DeleteModelPackage, UpdateModelPackage, and their groups (Create/Describe/List/Delete
ModelPackageGroup).

A model package is its request, kept: unversioned (`ModelPackageName`), or the next version of
a group (`ModelPackageGroupName`; its ARN ends `model-package/<group>/<version>`). One made from
an algorithm (`SourceAlgorithmSpecification`) without an `InferenceSpecification` gets the
algorithm's, over the model data it names. A model that names a package (`ModelPackageName` in
a container) is served by the package's first container (`containers_of`).
"""

from __future__ import annotations

import builtins
import copy
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from openmaker.algorithms.checks import additional_sources
from openmaker.algorithms.digests import Digests, inference_images, pinned
from openmaker.algorithms.service import Algorithms
from openmaker.algorithms.store import Store, find
from openmaker.jobs.db import ModelPackageGroupRecord, ModelPackageRecord, Tag
from openmaker.jobs.service import add_tagged
from openmaker.serving.clock import as_utc, now
from openmaker.serving.listing import page
from openmaker.shapes.errors import ValidationException
from openmaker.shapes.model import operation_model
from openmaker.shapes.validate import error_message

PENDING, IN_PROGRESS, COMPLETED = "Pending", "InProgress", "Completed"
PENDING_APPROVAL = "PendingManualApproval"


class ModelPackages:
    def __init__(self, store: Store, algorithms: Algorithms) -> None:
        self.store, self.algorithms = store, algorithms

    def create(self, request: dict[str, Any]) -> dict[str, str]:
        kept = {k: copy.deepcopy(v) for k, v in request.items() if k not in ("Tags", "ClientToken")}
        self._check(kept)
        group_name = kept.pop("ModelPackageGroupName", None)
        profiles = (kept.get("ValidationSpecification") or {}).get("ValidationProfiles") or []
        at = now()
        with self.store.writers() as session:
            if group_name is not None:
                group = find(session, ModelPackageGroupRecord, group_name)
                if group is None:
                    raise ValidationException(
                        f"ModelPackageGroupName: no model package group {group_name} exists"
                    )
                version = 1 + (
                    session.scalar(
                        select(func.max(ModelPackageRecord.version)).where(
                            ModelPackageRecord.group == group.name
                        )
                    )
                    or 0
                )
                name, approval = f"{group.name}/{version}", PENDING_APPROVAL
                group_of: str | None = group.name
            else:
                name, version, group_of = kept["ModelPackageName"], None, None
                approval = None
            approval = kept.pop("ModelApprovalStatus", approval)
            arn = self.store.arn("model-package", name)
            add_tagged(
                session,
                ModelPackageRecord(
                    name=name,
                    arn=arn,
                    group=group_of,
                    version=version,
                    request=kept,
                    status=PENDING if profiles else COMPLETED,
                    approval=approval,
                    validation=[
                        {"Name": p["ProfileName"], "Status": "NotStarted"} for p in profiles
                    ],
                    creation_time=at,
                    last_modified_time=at,
                ),
                arn,
                request.get("Tags") or [],
                "model package",
            )
        return {"ModelPackageArn": arn}

    def _check(self, request: dict[str, Any]) -> None:
        named, grouped = request.get("ModelPackageName"), request.get("ModelPackageGroupName")
        if (named is None) == (grouped is None):
            raise ValidationException(
                "Give ModelPackageName (an unversioned model package) or ModelPackageGroupName "
                "(a version in a group), one of them"
            )
        source = request.get("SourceAlgorithmSpecification")
        if request.get("InferenceSpecification") is None and source is not None:
            # Its digests were checked when the algorithm was made.
            request["InferenceSpecification"] = self._from_algorithm(source)
        elif request.get("InferenceSpecification") is None:
            raise ValidationException(
                "Value null at 'InferenceSpecification' failed to satisfy constraint: Member "
                "must not be null (openmaker serves a model package by its containers)"
            )
        else:
            self._check_containers(request)

    def _check_containers(self, request: dict[str, Any]) -> None:
        """No additional data source; each ImageDigest checked, or filled in (digests.py)."""
        problems = list(additional_sources(request))
        if not problems:  # last: it may ask a registry
            problems = list(Digests(self.store.settings).fill(inference_images(request)))
        if problems:
            raise ValidationException(error_message(problems))

    def _from_algorithm(self, source: dict[str, Any]) -> dict[str, Any]:
        """An InferenceSpecification from the source algorithm's, over its model data."""
        first = source["SourceAlgorithms"][0]
        at = "SourceAlgorithmSpecification.SourceAlgorithms.1.member.AlgorithmName"
        algorithm = self.algorithms.get(first["AlgorithmName"], at).request
        inference = copy.deepcopy(algorithm.get("InferenceSpecification"))
        if inference is None:
            raise ValidationException(f"{at}: the algorithm has no InferenceSpecification")
        for container in inference["Containers"]:
            for member in ("ModelDataUrl", "ModelDataSource"):
                if first.get(member) is not None:
                    container[member] = first[member]
        return dict(inference)

    def get(self, name_or_arn: str, member: str = "ModelPackageName") -> ModelPackageRecord:
        with self.store.sessions() as session:
            found = find(session, ModelPackageRecord, name_or_arn)
        if found is None:
            raise ValidationException(f"{member}: no model package {name_or_arn} exists")
        return found

    def describe(self, name_or_arn: str) -> dict[str, Any]:
        package = self.get(name_or_arn)
        members = operation_model("DescribeModelPackage").output_shape.members  # type: ignore[union-attr]
        result = {k: v for k, v in package.request.items() if k in members}
        result.update(_identity(package))
        result["ModelPackageStatusDetails"] = {
            "ValidationStatuses": [
                {k: s[k] for k in ("Name", "Status", "FailureReason") if k in s}
                for s in package.validation or []
            ]
        }
        result["LastModifiedTime"] = as_utc(package.last_modified_time)
        return result

    def list(self, params: dict[str, Any]) -> dict[str, Any]:
        kind = params.get("ModelPackageType", "Both")
        with self.store.sessions() as session:
            rows = list(session.scalars(select(ModelPackageRecord)))
            group = params.get("ModelPackageGroupName")
            found = find(session, ModelPackageGroupRecord, group) if group else None
        rows = [
            row
            for row in rows
            if (kind != "Versioned" or row.group is not None)
            and (kind != "Unversioned" or row.group is None)
            and (group is None or (found is not None and row.group == found.name))
            and params.get("ModelApprovalStatus") in (None, row.approval)
        ]
        return page("ListModelPackages", params, rows, _identity, "ModelPackageSummaryList")

    def delete(self, name_or_arn: str) -> None:
        with self.store.writers() as session:
            package = find(session, ModelPackageRecord, name_or_arn)
            if package is None:
                raise ValidationException(
                    f"ModelPackageName: no model package {name_or_arn} exists"
                )
            _delete(session, package)

    def update(self, params: dict[str, Any]) -> dict[str, str]:
        with self.store.writers() as session:
            package = find(session, ModelPackageRecord, params["ModelPackageArn"])
            if package is None:
                raise ValidationException(
                    f"ModelPackageArn: no model package {params['ModelPackageArn']} exists"
                )
            if params.get("ModelApprovalStatus") is not None:
                if package.group is None:
                    raise ValidationException(
                        "ModelApprovalStatus: only a versioned model package (one in a group) "
                        "has an approval status"
                    )
                package.approval = params["ModelApprovalStatus"]
            request = dict(package.request)
            for member in ("ApprovalDescription", "InferenceSpecification", "SourceUri"):
                if params.get(member) is not None:
                    request[member] = copy.deepcopy(params[member])
            if params.get("InferenceSpecification") is not None:
                self._check_containers(request)
            package.request, package.last_modified_time = request, now()
            session.commit()
            return {"ModelPackageArn": package.arn}

    def validating(self) -> builtins.list[str]:
        """The model packages whose validation has not ended."""
        with self.store.sessions() as session:
            query = select(ModelPackageRecord.name).where(
                ModelPackageRecord.status.in_((PENDING, IN_PROGRESS))
            )
            return [str(name) for name in session.scalars(query)]

    def record_validation(
        self, name: str, status: str, statuses: builtins.list[dict[str, Any]]
    ) -> None:
        """The package `name`'s validation has gone this far (validation.py)."""
        with self.store.writers() as session:
            package = session.get(ModelPackageRecord, name)
            if package is not None:
                package.status, package.validation = status, statuses
                session.commit()

    # The groups.

    def create_group(self, request: dict[str, Any]) -> dict[str, str]:
        name = request["ModelPackageGroupName"]
        arn = self.store.arn("model-package-group", name)
        kept = {k: copy.deepcopy(v) for k, v in request.items() if k != "Tags"}
        with self.store.writers() as session:
            add_tagged(
                session,
                ModelPackageGroupRecord(name=name, arn=arn, request=kept, creation_time=now()),
                arn,
                request.get("Tags") or [],
                "model package group",
            )
        return {"ModelPackageGroupArn": arn}

    def group(self, name_or_arn: str) -> ModelPackageGroupRecord:
        with self.store.sessions() as session:
            found = find(session, ModelPackageGroupRecord, name_or_arn)
        if found is None:
            raise ValidationException(
                f"ModelPackageGroupName: no model package group {name_or_arn} exists"
            )
        return found

    def describe_group(self, name_or_arn: str) -> dict[str, Any]:
        group = self.group(name_or_arn)
        return {**_group_summary(group), "CreatedBy": {}}

    def list_groups(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.store.sessions() as session:
            rows = list(session.scalars(select(ModelPackageGroupRecord)))
        return page(
            "ListModelPackageGroups", params, rows, _group_summary, "ModelPackageGroupSummaryList"
        )

    def delete_group(self, name_or_arn: str) -> None:
        with self.store.writers() as session:
            group = find(session, ModelPackageGroupRecord, name_or_arn)
            if group is None:
                raise ValidationException(
                    f"ModelPackageGroupName: no model package group {name_or_arn} exists"
                )
            versions = session.scalar(
                select(func.count()).where(ModelPackageRecord.group == group.name)
            )
            if versions:
                raise ValidationException(
                    f"ModelPackageGroupName: the group {group.name} holds {versions} model "
                    "package versions: delete them first"
                )
            session.delete(group)
            session.query(Tag).filter(Tag.resource_arn == group.arn).delete()
            session.commit()


def with_packages(session: Session, request: dict[str, Any]) -> dict[str, Any]:
    """A CreateModel request whose containers that name a model package are the package's (the
    model keeps each package's name: DescribeModel shows it)."""
    request = copy.deepcopy(request)
    if (request.get("PrimaryContainer") or {}).get("ModelPackageName"):
        request["PrimaryContainer"] = containers_of(
            session, request["PrimaryContainer"], "PrimaryContainer"
        )
    if request.get("Containers"):
        request["Containers"] = [
            containers_of(session, c, f"Containers.{i}") if c.get("ModelPackageName") else c
            for i, c in enumerate(request["Containers"], 1)
        ]
    return request


def containers_of(session: Session, container: dict[str, Any], member: str) -> dict[str, Any]:
    """A model's container that names a model package (`ModelPackageName`, a name or an ARN),
    as the package's first container serves it (the container's own Environment added)."""
    package = find(session, ModelPackageRecord, container["ModelPackageName"])
    if package is None:
        raise ValidationException(
            f"{member}.ModelPackageName: no model package {container['ModelPackageName']} exists"
        )
    first = dict(package.request["InferenceSpecification"]["Containers"][0])
    served = {
        k: copy.deepcopy(v)
        for k, v in first.items()
        if k in ("Image", "ModelDataUrl", "ModelDataSource", "Environment")
    }
    if first.get("Image"):
        served["Image"] = pinned(first, "Image", "ImageDigest")  # what the package was made with
    served["Environment"] = {
        **(first.get("Environment") or {}),
        **(container.get("Environment") or {}),
    }
    if not served["Environment"]:
        del served["Environment"]
    return {**container, **served}


def _delete(session: Session, package: ModelPackageRecord) -> None:
    session.delete(package)
    session.query(Tag).filter(Tag.resource_arn == package.arn).delete()
    session.commit()


def _identity(package: ModelPackageRecord) -> dict[str, Any]:
    """What Describe and List show of every package."""
    result: dict[str, Any] = {
        "ModelPackageName": package.group or package.name,
        "ModelPackageArn": package.arn,
        "CreationTime": as_utc(package.creation_time),
        "ModelPackageStatus": package.status,
    }
    if package.group is not None:
        result["ModelPackageGroupName"] = package.group
        result["ModelPackageVersion"] = package.version
    if package.approval is not None:
        result["ModelApprovalStatus"] = package.approval
    if package.request.get("ModelPackageDescription"):
        result["ModelPackageDescription"] = package.request["ModelPackageDescription"]
    return result


def _group_summary(group: ModelPackageGroupRecord) -> dict[str, Any]:
    result = {
        "ModelPackageGroupName": group.name,
        "ModelPackageGroupArn": group.arn,
        "CreationTime": as_utc(group.creation_time),
        "ModelPackageGroupStatus": COMPLETED,
    }
    if group.request.get("ModelPackageGroupDescription"):
        result["ModelPackageGroupDescription"] = group.request["ModelPackageGroupDescription"]
    return result
