"""Tags on resources, by ARN: AddTags, ListTags, DeleteTags, and `Tags` given at creation."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs.db import Tag, sessions, writer_sessions
from openmaker.jobs.resource import ResourceKind, of_arn
from openmaker.settings import Settings
from openmaker.shapes.errors import ResourceNotFound, ValidationException
from openmaker.shapes.paging import paginator

# SageMaker's limit per resource.
MAX_TAGS = 50
PAGES = paginator("ListTags")


class Tags:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        writers: sessionmaker[Session],
        kinds: Sequence[ResourceKind],
        tables: Mapping[str, Any] | None = None,
    ) -> None:
        """Tags on the resources of `kinds`, and on those of `tables` (resources that are not
        jobs, such as models, by the resource type in their ARN)."""
        self.sessions, self.writers, self.kinds = sessions, writers, kinds
        self.tables = dict(tables or {})

    @classmethod
    def of(
        cls,
        settings: Settings,
        kinds: Sequence[ResourceKind],
        tables: Mapping[str, Any] | None = None,
    ) -> Tags:
        """The tags kept in the database of `settings`."""
        return cls(sessions(settings), writer_sessions(settings), kinds, tables)

    def add(self, arn: str, tags: list[dict[str, str]]) -> list[dict[str, str]]:
        with self.writers() as session:
            self._check_resource(session, arn)
            put(session, arn, tags)
            session.commit()
        return tags

    def list(self, arn: str, limit: int = 50, token: str | None = None) -> dict[str, Any]:
        with self.sessions() as session:
            self._check_resource(session, arn)
            query = select(Tag).where(Tag.resource_arn == arn).order_by(Tag.key)
            position = PAGES.position(token, arn=arn)
            if token and position is not None:
                after = position.get("after")
                if not isinstance(after, str):
                    raise PAGES.invalid(token)
                query = query.where(Tag.key > after)
            rows = list(session.scalars(query.limit(limit + 1)))
        result: dict[str, Any] = {"Tags": [{"Key": t.key, "Value": t.value} for t in rows[:limit]]}
        following = {"after": rows[limit - 1].key} if len(rows) > limit else None
        return PAGES.next_page(result, following, arn=arn)

    # After `list` above, `builtins.list` names the type.
    def delete(self, arn: str, keys: builtins.list[str]) -> None:
        with self.writers() as session:
            self._check_resource(session, arn)
            session.execute(delete(Tag).where(Tag.resource_arn == arn, Tag.key.in_(keys)))
            session.commit()

    def _check_resource(self, session: Session, arn: str) -> None:
        """A resource of a kind openmaker keeps (by the ARN's resource type), that exists."""
        kind = of_arn(self.kinds, arn)
        resource = arn.split(":", 5)[-1].split("/", 1)[0] if arn.count(":") >= 5 else ""
        table = kind.table() if kind else self.tables.get(resource)
        if table is None or session.scalar(select(table.name).where(table.arn == arn)) is None:
            raise ResourceNotFound(f"Resource {arn} not found")


def put(session: Session, arn: str, tags: list[dict[str, str]]) -> None:
    """Set `tags` on `arn` (replacing the values of keys it has), within the caller's
    transaction; refuses reserved keys and more than MAX_TAGS in all."""
    for index, tag in enumerate(tags, start=1):
        if tag["Key"].lower().startswith("aws:"):
            raise ValidationException(
                f"Tags.{index}.member.Key: tag keys starting with 'aws:' are reserved for AWS use"
            )
    existing = set(session.scalars(select(Tag.key).where(Tag.resource_arn == arn)))
    added = {tag["Key"] for tag in tags} - existing
    if len(existing) + len(added) > MAX_TAGS:
        raise ValidationException(
            f"Tags: a resource can have at most {MAX_TAGS} tags; {arn} would have "
            f"{len(existing) + len(added)}"
        )
    for tag in tags:
        session.merge(Tag(resource_arn=arn, key=tag["Key"], value=tag.get("Value", "")))
