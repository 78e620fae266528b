"""What algorithms and model packages share: their database sessions, and finding a resource
by its name or its ARN."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs.db import sessions, writer_sessions
from openmaker.settings import Settings
from openmaker.shapes.arn import resource_arn

Record = TypeVar("Record")


@dataclass(frozen=True)
class Store:
    sessions: sessionmaker[Session]
    writers: sessionmaker[Session]
    region: str
    account_id: str
    settings: Settings  # where images are pulled from (digests.py)

    @classmethod
    def of(cls, settings: Settings) -> Store:
        return cls(
            sessions(settings),
            writer_sessions(settings),
            settings.region,
            settings.account_id,
            settings,
        )

    def arn(self, kind: str, name: str) -> str:
        return resource_arn(kind, name, self.region, self.account_id)


def find(session: Session, table: type[Record], name_or_arn: str) -> Record | None:
    """The row named `name_or_arn`: by its ARN (whose name SageMaker lowercases) or its name."""
    column: Any = table.arn if name_or_arn.startswith("arn:") else table.name  # type: ignore[attr-defined]
    return session.scalar(select(table).where(column == name_or_arn))


def taggable_tables() -> dict[str, type]:
    """The tables of the resources here, by the resource type in their ARNs (for the tag
    operations, openmaker/jobs/tags.py)."""
    from openmaker.jobs.db import AlgorithmRecord, ModelPackageGroupRecord, ModelPackageRecord

    return {
        "algorithm": AlgorithmRecord,
        "model-package": ModelPackageRecord,
        "model-package-group": ModelPackageGroupRecord,
    }
