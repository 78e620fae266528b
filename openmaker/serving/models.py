"""Models: CreateModel, DescribeModel, ListModels, DeleteModel.

A model is its request, kept: what an endpoint serves is read from it when the endpoint is
created: one container (`PrimaryContainer`, or one of `Containers`), a multi-model container
(`Mode: MultiModel`, serving/multi_model.py) or an inference pipeline (2 to 15 `Containers`,
serving/pipeline.py). What SageMaker accepts but openmaker cannot serve yet is refused here,
saying so.
"""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs.db import ModelRecord, Tag
from openmaker.jobs.service import add_tagged
from openmaker.serving.clock import as_utc, now
from openmaker.serving.image import ImageError, resolve
from openmaker.serving.listing import page
from openmaker.serving.multi_model import is_multi_model
from openmaker.shapes.arn import resource_arn
from openmaker.shapes.errors import ValidationException
from openmaker.shapes.locations import LocalPaths

MAX_PIPELINE = 15  # containers


class Models:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        writers: sessionmaker[Session],
        region: str,
        account_id: str,
        local: LocalPaths,
    ) -> None:
        self.sessions, self.writers = sessions, writers
        self.region, self.account_id, self.local = region, account_id, local

    def arn(self, name: str) -> str:
        return resource_arn("model", name, self.region, self.account_id)

    def create(self, request: dict[str, Any]) -> dict[str, str]:
        request = self._with_packages(request)
        check_model(request, self.local)
        name = request["ModelName"]
        arn = self.arn(name)
        kept = {k: copy.deepcopy(v) for k, v in request.items() if k != "Tags"}
        with self.writers() as session:
            add_tagged(
                session,
                ModelRecord(name=name, arn=arn, request=kept, creation_time=now()),
                arn,
                request.get("Tags") or [],
                "model",
            )
        return {"ModelArn": arn}

    def _with_packages(self, request: dict[str, Any]) -> dict[str, Any]:
        """Containers that name a model package, as the package serves them."""
        containers = [request.get("PrimaryContainer") or {}, *(request.get("Containers") or [])]
        if not any(c.get("ModelPackageName") for c in containers):
            return request
        from openmaker.algorithms.packages import with_packages

        with self.sessions() as session:
            return with_packages(session, request)

    def get(self, name: str) -> ModelRecord:
        with self.sessions() as session:
            model = session.get(ModelRecord, name)
        if model is None:
            raise ValidationException(f'Could not find model "{self.arn(name)}".')
        return model

    def describe(self, name: str) -> dict[str, Any]:
        model = self.get(name)
        return {**model.request, "ModelArn": model.arn, "CreationTime": as_utc(model.creation_time)}

    def list(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.sessions() as session:
            rows = list(session.scalars(select(ModelRecord)))
        return page("ListModels", params, rows, _summary, "Models")

    def delete(self, name: str) -> None:
        with self.writers() as session:
            model = session.get(ModelRecord, name)
            if model is None:
                raise ValidationException(f'Could not find model "{self.arn(name)}".')
            session.delete(model)
            session.query(Tag).filter(Tag.resource_arn == model.arn).delete()
            session.commit()


def _summary(model: ModelRecord) -> dict[str, Any]:
    return {
        "ModelName": model.name,
        "ModelArn": model.arn,
        "CreationTime": as_utc(model.creation_time),
    }


def the_container(request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The model's one container, and the member that names it (for messages)."""
    containers = request.get("Containers") or []
    if request.get("PrimaryContainer") is not None:
        return "PrimaryContainer", request["PrimaryContainer"]
    return "Containers.1", containers[0]


def check_model(request: dict[str, Any], local: LocalPaths) -> None:
    primary, containers = request.get("PrimaryContainer"), request.get("Containers")
    if (primary is None) == (not containers):
        raise ValidationException(
            "Exactly one of PrimaryContainer and Containers must be given"
            if primary is not None
            else "Value null at 'PrimaryContainer' failed to satisfy constraint: Member must "
            "not be null (or give Containers)"
        )
    if primary is not None:
        listed = [("PrimaryContainer", primary)]
    else:
        listed = [(f"Containers.{i + 1}", c) for i, c in enumerate(containers or [])]
    if len(listed) > 1:
        _check_pipeline(listed)
    for member, container in listed:
        if container.get("Image") is None:
            raise ValidationException(
                f"Value null at '{member}.Image' failed to satisfy constraint: Member must not "
                "be null (openmaker serves images, not model packages)"
            )
        try:
            resolve(container["Image"], local)
        except ImageError as exc:
            raise ValidationException(f"{member}.Image: {exc}") from None
        if is_multi_model(container):
            _check_multi_model(member, container)
        _check_model_data(member, container)


def _check_pipeline(listed: list[tuple[str, dict[str, Any]]]) -> None:
    """An inference pipeline's containers (serving/pipeline.py)."""
    if len(listed) > MAX_PIPELINE:
        raise ValidationException(
            f"Containers: an inference pipeline has at most {MAX_PIPELINE} containers"
        )
    for member, container in listed:
        if is_multi_model(container):
            raise ValidationException(
                f"{member}.Mode: a container of an inference pipeline cannot be MultiModel"
            )
    hostnames = [c.get("ContainerHostname") for _, c in listed]
    if any(hostnames) and not all(hostnames):
        missing = next(m for m, c in listed if not c.get("ContainerHostname"))
        raise ValidationException(
            f"{missing}.ContainerHostname: give a ContainerHostname to every container of the "
            "pipeline, or to none"
        )
    if any(hostnames) and len(set(hostnames)) != len(hostnames):
        raise ValidationException(
            "Containers: each container of the pipeline needs a ContainerHostname of its own"
        )


def _check_multi_model(member: str, container: dict[str, Any]) -> None:
    """A multi-model container reads its models under one S3 prefix (serving/multi_model.py)."""
    if container.get("ModelDataSource") is not None:
        raise ValidationException(
            f"{member}.ModelDataSource: a MultiModel container takes its models from "
            "ModelDataUrl, an S3 prefix"
        )
    if not container.get("ModelDataUrl"):
        raise ValidationException(
            f"Value null at '{member}.ModelDataUrl' failed to satisfy constraint: a MultiModel "
            "container needs the S3 prefix its models are under"
        )


def _check_model_data(member: str, container: dict[str, Any]) -> None:
    url, source = container.get("ModelDataUrl"), container.get("ModelDataSource")
    if url is not None and source is not None:
        raise ValidationException(f"{member}: give ModelDataUrl or ModelDataSource, not both")
    if url is not None and not url.startswith("s3://"):
        raise ValidationException(
            f"{member}.ModelDataUrl: openmaker reads model data from s3:// URIs only"
        )
    if source is None:
        return
    s3 = source.get("S3DataSource")
    if s3 is None:
        raise ValidationException(
            f"{member}.ModelDataSource: only S3DataSource is served by openmaker"
        )
    if s3["CompressionType"] == "Gzip" and s3["S3DataType"] != "S3Object":
        raise ValidationException(
            f"{member}.ModelDataSource.S3DataSource.CompressionType: Gzip needs S3DataType "
            "S3Object (one model.tar.gz)"
        )
