"""Persistence: training jobs, their log streams and log events, in SQLite by default."""

from __future__ import annotations

import contextlib
import os
import threading
from datetime import datetime
from functools import cache, partial
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnDefault,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.exc import DatabaseError as SqlDatabaseError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from openmaker.home import FILE_MODE, HomeError, prepare_home
from openmaker.settings import Settings
from openmaker.shapes.errors import ServiceError, ServiceUnavailable, ThrottlingException


class DatabaseError(HomeError):
    """The database file cannot be used; the message names it and says what to do."""


class Base(DeclarativeBase):
    pass


class JobRecord:
    """The columns every kind of job has: what the queue, capacity and recovery read and write
    (openmaker/jobs/resource.py). Each kind's table adds its own."""

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    secondary_status: Mapped[str] = mapped_column(String(32))
    transitions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    creation_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_modified_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # What runs the job (or starts it), to notice when it is gone and to stop it: a reference
    # only the executor reads (openmaker/jobs/executor.py).
    worker: Mapped[str | None] = mapped_column(String(256))
    # Attempts begun (RetryStrategy restarts the job after an infrastructure failure).
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    # The share of the machine its hosts hold while it runs (openmaker/jobs/capacity.py).
    placement: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Set once that process handles SIGTERM: a stop request is signalled only from then on,
    # and read from `stop_requested` by the worker before.
    worker_ready: Mapped[bool] = mapped_column(default=False)
    stop_requested: Mapped[str | None] = mapped_column(String(32))
    # The current transfer: {"phase": "Downloading", "done": bytes, "total": bytes}.
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class TrainingJob(JobRecord, Base):
    __tablename__ = "training_jobs"

    model_artifacts: Mapped[str | None] = mapped_column(String(1024))
    training_start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    training_end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LogStream(Base):
    """A log stream: named uniquely within its group only, as on CloudWatch (a training job and
    a processing job of one name may each have `<name>/algo-1-<epoch>`)."""

    __tablename__ = "log_streams"
    __table_args__ = (UniqueConstraint("group", "name", name="uq_log_streams_group_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    group: Mapped[str] = mapped_column(String(512))
    name: Mapped[str] = mapped_column(String(512))
    # The job or endpoint whose stream it is, of the kind its group says (so no foreign key).
    job_name: Mapped[str] = mapped_column(String(63), index=True)
    creation_time: Mapped[int] = mapped_column(BigInteger)


class LogEvent(Base):
    __tablename__ = "log_events"
    __table_args__ = (Index("ix_log_events_stream_id", "stream_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stream_id: Mapped[int] = mapped_column(ForeignKey("log_streams.id"))
    timestamp: Mapped[int] = mapped_column(BigInteger)
    ingestion_time: Mapped[int] = mapped_column(BigInteger)
    message: Mapped[str] = mapped_column(Text)


class Tag(Base):
    """A tag of any resource, by ARN (AddTags, ListTags, DeleteTags, and `Tags` at creation)."""

    __tablename__ = "tags"

    resource_arn: Mapped[str] = mapped_column(String(256), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class MetricValue(Base):
    """One value of a `MetricDefinitions` metric, found in a log line at `timestamp` (ms)."""

    __tablename__ = "metric_values"
    __table_args__ = (Index("ix_metric_values_job_name", "job_name", "name", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_name: Mapped[str] = mapped_column(ForeignKey("training_jobs.name"))
    name: Mapped[str] = mapped_column(String(255))
    timestamp: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float]
    # The host whose log line it was ("algo-1"); None in databases made before hosts were kept.
    host: Mapped[str | None] = mapped_column(String(16))


class SystemMetricValue(Base):
    """One sample of a host's utilization (CPUUtilization, MemoryUtilization, ...), in percent,
    as SageMaker publishes them for a training job's instances."""

    __tablename__ = "system_metric_values"
    __table_args__ = (
        Index("ix_system_metric_values_series", "job_name", "name", "host", "timestamp"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_name: Mapped[str] = mapped_column(ForeignKey("training_jobs.name"))
    host: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float]


def unavailable(context: ExceptionContext) -> ServiceError | None:
    """A database that stays locked, or a full disk, as the service answers them (clients retry
    both): every caller, the API's handlers above all, gets these instead of the driver's error.
    Other errors pass unchanged."""
    if not isinstance(context.sqlalchemy_exception, OperationalError):
        return None
    text = str(context.original_exception)
    if "locked" in text or "busy" in text:
        return ThrottlingException("Rate exceeded: the job database is busy")
    if "disk is full" in text or "disk I/O error" in text:
        return ServiceUnavailable(
            "openmaker's disk is full: the job database cannot record the request; free "
            "space on the disk that holds OPENMAKER_HOME, then retry"
        )
    return None


def _tune_sqlite(busy_seconds: float, dbapi_connection: Any, _record: Any) -> None:
    """`busy_seconds`: how long a statement waits for another process's write lock before it
    gives up (the API then answers ThrottlingException, which clients retry)."""
    # WAL lets the CLI read while a worker writes; the timeout rides out short write locks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
    cursor.close()
    # Transactions are begun by `_begin` below, not by the driver's own guesswork.
    dbapi_connection.isolation_level = None


def _begin(connection: Connection) -> None:
    # A writer takes the write lock before it reads: two processes changing one job (a worker
    # recording its progress, a stop request) then never overwrite each other's changes.
    immediate = connection.get_execution_options().get(_WRITER, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


_WRITER = "openmaker_writer"
# Databases whose schema this process need not check (see `schema_is_current`).
_current_schemas: set[str] = set()


def schema_is_current(url: str) -> None:
    """Said by a job's worker of its order's database: the submitter made or upgraded its
    schema before it wrote the job there (the same openmaker), so the worker's engine skips the
    checks (tens of milliseconds of every job's CPU)."""
    _current_schemas.add(url)


@cache
def engine_for(url: str, busy_seconds: float) -> Engine:
    engine = create_engine(url)
    event.listen(engine, "handle_error", unavailable)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", partial(_tune_sqlite, busy_seconds))
        event.listen(engine, "begin", _begin)
    if url not in _current_schemas:
        Base.metadata.create_all(engine)
        _key_log_streams(engine)
        _add_new_columns(engine)
        _name_old_workers(engine)
    return engine


def _key_log_streams(engine: Engine) -> None:
    """Log streams named uniquely across groups (a database made before streams had an id of
    their own) are keyed by (group, name) instead: both log tables are made anew and their rows
    copied, each event keeping its id (tokens clients hold name them)."""
    if "id" in {c["name"] for c in inspect(engine).get_columns("log_streams")}:
        return  # read first: mostly there is nothing to do
    with engine.execution_options(**{_WRITER: True}).begin() as connection:
        inspector = inspect(connection)
        if "id" in {c["name"] for c in inspector.get_columns("log_streams")}:
            return  # another process upgraded it while this one waited for the lock
        for table in ("log_events", "log_streams"):
            for index in inspector.get_indexes(table):  # their names are the new tables' too
                connection.exec_driver_sql(f'DROP INDEX "{index["name"]}"')
            connection.exec_driver_sql(f'ALTER TABLE "{table}" RENAME TO "old_{table}"')
        tables = [Base.metadata.tables[name] for name in ("log_streams", "log_events")]
        Base.metadata.create_all(connection, tables=tables)
        connection.exec_driver_sql(
            'INSERT INTO log_streams ("group", name, job_name, creation_time) '
            'SELECT "group", name, job_name, creation_time FROM old_log_streams ORDER BY name'
        )
        # Old stream names were unique across groups: each event joins one stream.
        connection.exec_driver_sql(
            "INSERT INTO log_events (id, stream_id, timestamp, ingestion_time, message) "
            "SELECT e.id, s.id, e.timestamp, e.ingestion_time, e.message "
            "FROM old_log_events e JOIN log_streams s ON s.name = e.stream ORDER BY e.id"
        )
        connection.exec_driver_sql("DROP TABLE old_log_events")
        connection.exec_driver_sql("DROP TABLE old_log_streams")


def _add_new_columns(engine: Engine) -> None:
    """A database made by an earlier openmaker gets the columns added since (create_all makes
    missing tables, not missing columns). Every column added after the first release must be
    nullable or have a plain default, so that existing rows stay valid."""
    inspector = inspect(engine)
    missing = [
        (table, column)
        for table in Base.metadata.sorted_tables
        for column in table.columns
        if column.name not in {c["name"] for c in inspector.get_columns(table.name)}
    ]
    if not missing:
        return
    with engine.begin() as connection:
        for table, column in missing:
            kind = column.type.compile(engine.dialect)
            # Sequences and identities are default generators without a value.
            default = column.default.arg if isinstance(column.default, ColumnDefault) else None
            clause = ""
            if isinstance(default, bool | int | float):
                clause = f" DEFAULT {int(default) if isinstance(default, bool) else default}"
            elif isinstance(default, str):
                clause = " DEFAULT '{}'".format(default.replace("'", "''"))
            connection.exec_driver_sql(
                f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}{clause}'
            )


def _name_old_workers(engine: Engine) -> None:
    """A job recorded by an openmaker that kept its worker's PID (`worker_pid`, with its start
    time `worker_started`) gets that worker's reference instead, so that a job running across
    the upgrade is still watched (and stopped). The old columns stay, emptied."""
    from openmaker.jobs.executor import local_reference

    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        old = {c["name"] for c in inspector.get_columns(table.name)}
        if "worker" not in table.columns or "worker_pid" not in old:
            continue
        started = "worker_started" if "worker_started" in old else "NULL"
        query = text(
            f'SELECT name, worker_pid, {started} FROM "{table.name}" WHERE worker_pid IS NOT NULL'
        )
        with engine.connect() as connection:  # read first: mostly there is nothing to do
            if not connection.execute(query).first():
                continue
        with engine.execution_options(**{_WRITER: True}).begin() as connection:
            for name, pid, ticks in connection.execute(query).all():
                connection.execute(
                    text(
                        f'UPDATE "{table.name}" SET worker = :worker, worker_pid = NULL '
                        "WHERE name = :name"
                    ),
                    {"worker": local_reference(pid, ticks), "name": name},
                )


def warm(url: str, busy_seconds: float) -> None:
    """Compile ahead, in the engine of `url` (as `_database` makes it), what every job's worker
    asks first (its row, by name), then close its connections: the fork server calls it once
    the database exists, so that each worker it forks has that compiled (~11 ms of a job's
    CPU) and no file open."""
    schema_is_current(url)  # made or upgraded by the submitter, which has stored a job by now
    engine = engine_for(url, busy_seconds)
    try:
        with Session(engine.execution_options(**{_WRITER: False})) as session:
            for table in (TrainingJob, ProcessingJobRecord, TransformJobRecord, EndpointRecord):
                session.get(table, "")
    finally:
        engine.dispose()


def sessions(settings: Settings) -> sessionmaker[Session]:
    """Sessions for reading."""
    return sessionmaker(_database(settings), expire_on_commit=False)


def writer_sessions(settings: Settings) -> sessionmaker[Session]:
    """Sessions for read-modify-write: each transaction holds the write lock from its start."""
    engine = _database(settings).execution_options(**{_WRITER: True})
    return sessionmaker(engine, expire_on_commit=False)


def _database(settings: Settings) -> Engine:
    """The engine of the home's database, made if the file is missing (only then: an empty or
    unreadable file is a DatabaseError that says what to do)."""
    prepare_home(settings.home)
    path = settings.database_file
    if path is None:
        return engine_for(settings.database_url, settings.db_busy_seconds)
    if not path.exists():
        _create(path)
    elif path.stat().st_size == 0:
        raise DatabaseError(
            f"the database {path} is empty (0 bytes), so every job it held is lost: restore it "
            "from a backup, or delete it to start again with no jobs"
        )
    try:
        return engine_for(settings.database_url, settings.db_busy_seconds)
    except (OperationalError, ServiceError):
        raise  # locked or out of space: not the file's fault
    except SqlDatabaseError as exc:
        cause = str(exc.orig).strip() if exc.orig is not None else type(exc).__name__
        raise DatabaseError(
            f"the database {path} cannot be read ({cause}): move it aside "
            f"(mv {path} {path}.broken) to start again with no jobs, or restore it from a backup"
        ) from None


def _create(path: Path) -> None:
    """A new database, made whole under another name and linked into place: another process
    never takes a half-made one, so a database file found empty is never a new one."""
    # Named by thread too: two threads of one process may each make it.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
    temporary.unlink(missing_ok=True)
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    try:
        engine = create_engine(f"sqlite:///{temporary}")
        try:
            Base.metadata.create_all(engine)
        finally:
            engine.dispose()
        # Another process may have made it first: theirs is as good.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class ModelRecord(Base):
    """A model (CreateModel): its request, kept as given (Tags aside)."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    creation_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class EndpointConfigRecord(Base):
    """An endpoint configuration (CreateEndpointConfig): its request, kept as given."""

    __tablename__ = "endpoint_configs"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    creation_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class EndpointRecord(JobRecord, Base):
    """An endpoint: a job whose worker keeps its instances serving until it is deleted."""

    __tablename__ = "endpoints"

    # What it was made from, as they were then (a config or model may be deleted while an
    # endpoint made from it serves, as on SageMaker).
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    models: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Its instances as its worker reports them: [{"variant", "id", "address", "healthy"}].
    instances: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # What an update asks its worker for, until done: UpdateEndpoint's {"EndpointConfigName",
    # "config", "models"}; UpdateEndpointWeightsAndCapacities' {variant: {"weight",
    # "count"}} (serving/updates.py).
    pending_update: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    desired_variants: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class EndpointMetricValue(Base):
    """What an endpoint variant's invocations measured over a second or so, as a CloudWatch
    statistic set (serving/metrics.py writes them; kept after the endpoint is deleted, as
    CloudWatch keeps them)."""

    __tablename__ = "endpoint_metric_values"
    __table_args__ = (
        Index("ix_endpoint_metric_values_series", "endpoint", "variant", "name", "timestamp"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # `AWS/SageMaker` (invocations) or `/aws/sagemaker/Endpoints` (the instances' utilization).
    namespace: Mapped[str] = mapped_column(String(64), default="AWS/SageMaker")
    endpoint: Mapped[str] = mapped_column(String(63))
    variant: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[int] = mapped_column(BigInteger)  # ms: the start of what it sums
    count: Mapped[int] = mapped_column(Integer)
    total: Mapped[float]
    low: Mapped[float]
    high: Mapped[float]


class ProcessingJobRecord(JobRecord, Base):
    """A processing job (openmaker/processing/): hosts that run a container over S3 inputs."""

    __tablename__ = "processing_jobs"

    processing_start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    processing_end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The first 1 KB of /opt/ml/output/message of the first host that left one.
    exit_message: Mapped[str | None] = mapped_column(Text)


class TransformJobRecord(JobRecord, Base):
    """A batch transform job: its request, with its model's request as it was at creation (a
    model may be deleted while a job made from it runs, as on SageMaker)."""

    __tablename__ = "transform_jobs"

    model: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    transform_start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    transform_end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AlgorithmRecord(Base):
    """An algorithm (CreateAlgorithm, openmaker/algorithms/): its request, kept as given, and
    how far the validation of its profiles has gone."""

    __tablename__ = "algorithms"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(32))
    # AlgorithmStatusDetails.ValidationStatuses, as Describe shows them.
    validation: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    creation_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ModelPackageGroupRecord(Base):
    """A model package group (CreateModelPackageGroup): its request, kept as given."""

    __tablename__ = "model_package_groups"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    creation_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ModelPackageRecord(Base):
    """A model package (CreateModelPackage): unversioned (`name` is its name), or a version
    in a group (`name` is "<group>/<version>", as in its ARN)."""

    __tablename__ = "model_packages"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256))
    group: Mapped[str | None] = mapped_column(String(63), index=True)
    version: Mapped[int | None] = mapped_column(Integer)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(32))
    approval: Mapped[str | None] = mapped_column(String(32))
    # ModelPackageStatusDetails.ValidationStatuses (openmaker/algorithms/validation.py).
    validation: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    creation_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_modified_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
