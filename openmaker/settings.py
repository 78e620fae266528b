"""Every setting openmaker takes from its environment, read once and checked.

`load_settings()` reads the OPENMAKER_* and AWS_* variables of the process that starts (a
command, the server) and returns a frozen `Settings`, which is then handed down explicitly: to
the job service, into each job's launch record and its worker's order (jobs/queue.py,
jobs/executor.py), to each host. No other module reads `os.environ` (tests/test_settings.py
guards that). A value openmaker cannot use is a `SettingsError` naming the variable, raised
before anything starts.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

# Processes and threads per host: room for data loaders and their threads on a large
# instance, not for a fork bomb.
DEFAULT_PIDS_LIMIT = 4096
# SageMaker's time between SIGTERM and SIGKILL when a job is stopped.
DEFAULT_GRACE_SECONDS = 120.0
# obstore's default is 3 minutes; a dead server should fail a job sooner than that.
DEFAULT_RETRY_SECONDS = 60.0
# Where the bridges of hosts' own networks take their addresses (runtime/network.py).
DEFAULT_NETWORK_RANGE = "10.213.0.0/16"
# How long a job waits for room on the Ray cluster before it fails.
DEFAULT_RAY_WAIT_SECONDS = 600.0
DEFAULT_RAY_ANSWER_SECONDS = 20.0
DEFAULT_INVOCATION_SECONDS = 60.0
DEFAULT_HEALTH_CHECK_SECONDS = 5.0
# How long a serverless variant's instance is kept with no invocation before it is stopped.
DEFAULT_SERVERLESS_IDLE_SECONDS = 300.0
# What the sandbox shows empty (folders) or as an empty file, unless OPENMAKER_SANDBOX_HIDE
# says otherwise: the machine's secrets and its users' files. Patterns as glob(7).
DEFAULT_HIDDEN = (
    "/root", "/home", "/etc/shadow*", "/etc/gshadow*", "/etc/ssh/ssh_host_*_key",
    "/etc/security/opasswd", "/var/spool/cron", "/var/mail",
)  # fmt: skip


class SettingsError(ValueError):
    """A setting openmaker cannot use; the message names the variable."""


@dataclass(frozen=True)
class S3Endpoint:
    """An S3-compatible server and the credentials that reach it."""

    url: str
    access_key_id: str | None
    secret_access_key: str | None
    session_token: str | None
    region: str


@dataclass(frozen=True)
class EcrEndpoint:
    """How ECR's API is reached for registry tokens (GetAuthorizationToken) when an ECR image's
    registry has no credentials configured: its address (AWS_ENDPOINT_URL_ECR, else
    AWS_ENDPOINT_URL; None: AWS's own) and the AWS credentials given in the environment (None:
    boto3's other sources, such as ~/.aws/credentials)."""

    url: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class StoreSettings:
    """How openmaker reaches object storage, and how a job's code does."""

    # Where `s3://bucket/key` lives when no S3 server is configured.
    embedded_dir: Path
    # The S3 server in use (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL); None: the embedded store.
    endpoint: S3Endpoint | None = None
    # How long transient store errors are retried (OPENMAKER_STORE_RETRY_SECONDS).
    retry_seconds: float = DEFAULT_RETRY_SECONDS
    # Set by `openmaker server` for its jobs: the gate through which their code reaches the store
    # (the embedded one, or the S3 server in use) with a key of each job's own.
    gate_url: str | None = None
    # Set by `openmaker server` without a gate when the S3 server's credentials are its own key
    # pair (which also signs its API): a job's code then gets the address without them.
    code_without_credentials: bool = False


@dataclass(frozen=True)
class Settings:
    home: Path
    region: str = "us-east-1"
    # SageMaker ARNs need a 12-digit account; openmaker has none, so it uses a fixed one.
    account_id: str = "000000000000"
    # How jobs share this machine (see openmaker/jobs/capacity.py): "shared" or "strict".
    capacity: str = "shared"
    # What the machine offers to jobs, when it must not be detected (tests, a machine shared
    # with other work): logical CPUs, memory in GiB, GPUs.
    cpus: int | None = None
    memory_gib: float | None = None
    gpus: int | None = None
    # The folders under which requests through the API may name local paths (file:// URIs,
    # local image folders): the machine owner's to grant; none by default.
    file_roots: tuple[Path, ...] = ()
    # The most log bytes (with the metric values found in them) one job may store; later output
    # is read and dropped. See README "Logs".
    log_limit_bytes: int = 1024 * 1024 * 1024
    # The most processes and threads one host may have at once (None: no limit).
    pids_limit: int | None = DEFAULT_PIDS_LIMIT
    # False: the code runs as a plain process (OPENMAKER_SANDBOX=none).
    sandbox: bool = True
    # What the sandbox shows empty: paths or glob patterns.
    sandbox_hide: tuple[str, ...] = DEFAULT_HIDDEN
    # Seconds between SIGTERM and SIGKILL when a job is stopped.
    stop_grace_seconds: float = DEFAULT_GRACE_SECONDS
    # Keep a host's folder after its job, for a post-mortem.
    keep_job_files: bool = False
    # Hosts get networks of their own (runtime/network.py) unless "shared"
    # (OPENMAKER_NETWORK);
    # their bridges' /24s come from this IPv4 range.
    shared_network: bool = False
    network_range: str = DEFAULT_NETWORK_RANGE
    # What hosts see as /etc/resolv.conf (OPENMAKER_RESOLV_CONF).
    resolv_conf: Path = Path("/etc/resolv.conf")
    # How long a statement waits for another process's write lock before it gives up.
    db_busy_seconds: float = 30.0
    # A server over the user's S3 server puts its jobs' code behind its own gate too.
    s3_gate: bool = False
    # The S3 server in use and how long its transient errors are retried.
    s3_endpoint: S3Endpoint | None = None
    store_retry_seconds: float = DEFAULT_RETRY_SECONDS
    # Set by `openmaker server` for its jobs (see StoreSettings).
    gate_url: str | None = None
    code_without_s3_credentials: bool = False
    # The server's key pair when given in OPENMAKER_ACCESS_KEY_ID / _SECRET_ACCESS_KEY (else
    # generated into the home); never part of a job's launch record.
    server_key_pair: tuple[str, str] | None = field(default=None, repr=False)
    # AWS_ENDPOINT_URL_SAGEMAKER: the CLI then works through that server.
    sagemaker_endpoint: str | None = None
    # Registries (host[:port]) reached over plain HTTP or without checking their certificate
    # (OPENMAKER_INSECURE_REGISTRIES, comma-separated), and the Docker auth file whose
    # credentials pulls use (REGISTRY_AUTH_FILE, else ~/.docker/config.json where it exists).
    insecure_registries: tuple[str, ...] = ()
    registry_auth_file: Path | None = None
    # The containers' registries.conf (mirrors, insecure registries) skopeo reads instead of
    # /etc/containers/registries.conf (OPENMAKER_REGISTRIES_CONF).
    registries_conf: Path | None = None
    # Where registry tokens for ECR images come from (see EcrEndpoint).
    ecr: EcrEndpoint = field(default_factory=EcrEndpoint)
    # SageMaker's framework images (OPENMAKER_FRAMEWORK_IMAGES): "pull" (run as they are when
    # they, or a mirror, can be pulled; else this machine's Python stands in) or "local"
    # (always stood in for, never pulled).
    framework_images: str = "pull"
    # Where a job's hosts run (OPENMAKER_EXECUTOR): "local" (threads of its worker, on this
    # machine) or "ray" (actors on the Ray cluster at RAY_ADDRESS; see training/ray_hosts.py).
    executor: str = "local"
    ray_address: str | None = None
    # How long a job waits Pending for room on the Ray cluster before it fails
    # (OPENMAKER_RAY_WAIT_SECONDS).
    ray_wait_seconds: float = DEFAULT_RAY_WAIT_SECONDS
    # How long `openmaker cluster` and the console wait for the Ray cluster to describe itself
    # (OPENMAKER_RAY_ANSWER_SECONDS): Ray retries an address where nothing answers for minutes.
    ray_answer_seconds: float = DEFAULT_RAY_ANSWER_SECONDS
    # The address of this machine that the Ray cluster's nodes reach it by
    # (OPENMAKER_ADVERTISE_ADDRESS): the server's embedded S3 endpoint listens there and the
    # jobs' code is given it. None: the server's own address (--host).
    advertise_address: str | None = None
    # How long an endpoint's container has to answer an invocation, streamed or not
    # (OPENMAKER_INVOCATION_SECONDS; SageMaker's 60 s by default).
    invocation_seconds: float = DEFAULT_INVOCATION_SECONDS
    # InvokeEndpoint's plain case answered in C (openmaker/api/lane.py); off: all in Python.
    invoke_lane: bool = True
    # How often a serving instance is pinged once it has answered its first ping
    # (OPENMAKER_HEALTH_CHECK_SECONDS; serving/health.py).
    health_check_seconds: float = DEFAULT_HEALTH_CHECK_SECONDS
    # How long a serverless variant's instance stays with no invocation before it is stopped
    # (OPENMAKER_SERVERLESS_IDLE_SECONDS; serving/serverless.py).
    serverless_idle_seconds: float = DEFAULT_SERVERLESS_IDLE_SECONDS

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.home / 'openmaker.db'}"

    @property
    def database_file(self) -> Path | None:
        return sqlite_file(self.database_url)

    @property
    def private_paths(self) -> tuple[Path, ...]:
        """What no job's sandbox may show: openmaker's home (the database, every job's
        files) and the registries' credentials (the Docker auth file)."""
        auth = () if self.registry_auth_file is None else (self.registry_auth_file,)
        return (self.home, *auth)

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def embedded_s3_dir(self) -> Path:
        """The folder that `s3://bucket/key` maps onto when no S3 endpoint is configured."""
        return self.home / "s3"

    @property
    def store(self) -> StoreSettings:
        return StoreSettings(
            embedded_dir=self.embedded_s3_dir,
            endpoint=self.s3_endpoint,
            retry_seconds=self.store_retry_seconds,
            gate_url=self.gate_url,
            code_without_credentials=self.code_without_s3_credentials,
        )

    def for_jobs(self) -> Settings:
        """What a job's worker gets: everything but the server's key pair and the CLI's."""
        return replace(self, server_key_pair=None, sagemaker_endpoint=None)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings in `environ` (this process's environment when None)."""
    env = _Reader(os.environ if environ is None else environ)
    home = Path(env.text("OPENMAKER_HOME") or Path.home() / ".openmaker").absolute()
    region = env.text("AWS_REGION") or env.text("AWS_DEFAULT_REGION") or "us-east-1"
    return Settings(
        home=home,
        region=region,
        account_id=env.text("OPENMAKER_ACCOUNT_ID") or "000000000000",
        capacity=env.choice("OPENMAKER_CAPACITY", ("shared", "strict")),
        cpus=env.number("OPENMAKER_CPUS", int),
        memory_gib=env.number("OPENMAKER_MEMORY_GIB", float),
        gpus=env.number("OPENMAKER_GPUS", int),
        file_roots=env.folders("OPENMAKER_FILE_ROOTS"),
        log_limit_bytes=int(env.number_or("OPENMAKER_LOG_LIMIT_MB", 1024.0) * 1024 * 1024),
        pids_limit=env.limit("OPENMAKER_PIDS_LIMIT", DEFAULT_PIDS_LIMIT),
        sandbox=env.choice("OPENMAKER_SANDBOX", ("", "none")) != "none",
        sandbox_hide=env.patterns("OPENMAKER_SANDBOX_HIDE", DEFAULT_HIDDEN),
        stop_grace_seconds=env.number_or("OPENMAKER_STOP_GRACE_SECONDS", DEFAULT_GRACE_SECONDS),
        keep_job_files=env.flag("OPENMAKER_KEEP_JOB_FILES"),
        shared_network=env.choice("OPENMAKER_NETWORK", ("", "shared")) == "shared",
        network_range=env.ipv4_network("OPENMAKER_NETWORK_RANGE", DEFAULT_NETWORK_RANGE),
        resolv_conf=Path(env.text("OPENMAKER_RESOLV_CONF") or "/etc/resolv.conf"),
        db_busy_seconds=env.number_or("OPENMAKER_DB_BUSY_SECONDS", 30.0),
        s3_gate=env.flag("OPENMAKER_S3_GATE"),
        s3_endpoint=env.s3_endpoint(region),
        store_retry_seconds=env.number_or("OPENMAKER_STORE_RETRY_SECONDS", DEFAULT_RETRY_SECONDS),
        server_key_pair=env.key_pair("OPENMAKER_ACCESS_KEY_ID", "OPENMAKER_SECRET_ACCESS_KEY"),
        sagemaker_endpoint=env.text("AWS_ENDPOINT_URL_SAGEMAKER") or None,
        insecure_registries=env.registries("OPENMAKER_INSECURE_REGISTRIES"),
        registry_auth_file=_auth_file(env.text("REGISTRY_AUTH_FILE")),
        registries_conf=env.file("OPENMAKER_REGISTRIES_CONF"),
        ecr=env.ecr_endpoint(),
        framework_images=env.choice("OPENMAKER_FRAMEWORK_IMAGES", ("pull", "local")),
        executor=env.choice("OPENMAKER_EXECUTOR", ("local", "ray")),
        ray_address=env.text("RAY_ADDRESS") or None,
        ray_wait_seconds=env.number_or("OPENMAKER_RAY_WAIT_SECONDS", DEFAULT_RAY_WAIT_SECONDS),
        ray_answer_seconds=env.number_or(
            "OPENMAKER_RAY_ANSWER_SECONDS", DEFAULT_RAY_ANSWER_SECONDS
        ),
        advertise_address=env.text("OPENMAKER_ADVERTISE_ADDRESS") or None,
        invocation_seconds=env.number_or(
            "OPENMAKER_INVOCATION_SECONDS", DEFAULT_INVOCATION_SECONDS
        ),
        invoke_lane=env.choice("OPENMAKER_INVOKE_LANE", ("on", "off")) == "on",
        health_check_seconds=env.number_or(
            "OPENMAKER_HEALTH_CHECK_SECONDS", DEFAULT_HEALTH_CHECK_SECONDS
        ),
        serverless_idle_seconds=env.number_or(
            "OPENMAKER_SERVERLESS_IDLE_SECONDS", DEFAULT_SERVERLESS_IDLE_SECONDS
        ),
    )


def _auth_file(setting: str) -> Path | None:
    """REGISTRY_AUTH_FILE, else Docker's own file when there is one (as skopeo and docker)."""
    if setting:
        return Path(setting).absolute()
    docker = Path.home() / ".docker" / "config.json"
    return docker if docker.is_file() else None


def process_environment() -> dict[str, str]:
    """This process's environment without openmaker's settings and AWS credentials: what the
    programs openmaker starts (its workers, rclone, mount helpers) need of it (PATH, locale),
    and no key they have no use for."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OPENMAKER_", "AWS_"))
    }


def client_plugins() -> str:
    """BOTOCORE_EXPERIMENTAL__PLUGINS as set here: `openmaker env` keeps the user's plugins."""
    return os.environ.get("BOTOCORE_EXPERIMENTAL__PLUGINS", "")


def to_json(settings: Settings) -> dict[str, Any]:
    """The settings as JSON values, for a job's launch record and its worker's order."""
    endpoint = settings.s3_endpoint
    auth, conf = settings.registry_auth_file, settings.registries_conf
    return {
        "home": str(settings.home),
        "region": settings.region,
        "account_id": settings.account_id,
        "capacity": settings.capacity,
        "cpus": settings.cpus,
        "memory_gib": settings.memory_gib,
        "gpus": settings.gpus,
        "file_roots": [str(p) for p in settings.file_roots],
        "log_limit_bytes": settings.log_limit_bytes,
        "pids_limit": settings.pids_limit,
        "sandbox": settings.sandbox,
        "sandbox_hide": list(settings.sandbox_hide),
        "stop_grace_seconds": settings.stop_grace_seconds,
        "keep_job_files": settings.keep_job_files,
        "shared_network": settings.shared_network,
        "network_range": settings.network_range,
        "resolv_conf": str(settings.resolv_conf),
        "db_busy_seconds": settings.db_busy_seconds,
        "s3_gate": settings.s3_gate,
        "s3_endpoint": None if endpoint is None else vars(endpoint),
        "store_retry_seconds": settings.store_retry_seconds,
        "gate_url": settings.gate_url,
        "code_without_s3_credentials": settings.code_without_s3_credentials,
        "insecure_registries": list(settings.insecure_registries),
        "registry_auth_file": None if auth is None else str(auth),
        "registries_conf": None if conf is None else str(conf),
        "ecr": asdict(settings.ecr),
        "framework_images": settings.framework_images,
        "executor": settings.executor,
        "ray_address": settings.ray_address,
        "ray_wait_seconds": settings.ray_wait_seconds,
        "ray_answer_seconds": settings.ray_answer_seconds,
        "advertise_address": settings.advertise_address,
        "invocation_seconds": settings.invocation_seconds,
        "invoke_lane": settings.invoke_lane,
        "health_check_seconds": settings.health_check_seconds,
        "serverless_idle_seconds": settings.serverless_idle_seconds,
    }


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///` URL; None for another database, or one in memory."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == prefix or ":memory:" in url:
        return None
    return Path(url.removeprefix(prefix))


def from_json(data: Mapping[str, Any]) -> Settings:
    """The settings `to_json` wrote."""
    special: tuple[str, ...] = ("home", "file_roots", "sandbox_hide", "s3_endpoint")
    special += ("insecure_registries", "registry_auth_file", "resolv_conf", "registries_conf")
    special += ("ecr",)
    endpoint = data.get("s3_endpoint")
    auth = data.get("registry_auth_file")
    conf = data.get("registries_conf")
    return Settings(
        home=Path(data["home"]),
        registries_conf=None if conf is None else Path(conf),
        ecr=EcrEndpoint(**data.get("ecr", {})),
        insecure_registries=tuple(data.get("insecure_registries", ())),
        registry_auth_file=None if auth is None else Path(auth),
        resolv_conf=Path(data.get("resolv_conf", "/etc/resolv.conf")),
        file_roots=tuple(Path(p) for p in data["file_roots"]),
        sandbox_hide=tuple(data["sandbox_hide"]),
        s3_endpoint=None if endpoint is None else S3Endpoint(**endpoint),
        **{k: v for k, v in data.items() if k not in special},
    )


_N = TypeVar("_N", int, float)


class _Reader:
    """Reads and checks the variables of one environment."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str) -> str:
        return self.env.get(name) or ""

    def folders(self, name: str) -> tuple[Path, ...]:
        """Absolute folders separated by `:`; empty parts are skipped."""
        parts = [part for part in self.text(name).split(":") if part]
        relative = [part for part in parts if not part.startswith("/")]
        if relative:
            raise SettingsError(
                f"{name} must list absolute folders separated by ':', not {relative[0]!r}"
            )
        return tuple(Path(part) for part in parts)

    def patterns(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """Paths or glob patterns separated by `:`, replacing `default`; a leading `+` adds
        them to it. Set but empty: none."""
        setting = self.env.get(name)
        if setting is None:
            return default
        given = tuple(p for p in setting.removeprefix("+").split(":") if p)
        return (*default, *given) if setting.startswith("+") else given

    def registries(self, name: str) -> tuple[str, ...]:
        """Registry hosts, each with its port where it has one, separated by commas."""
        parts = tuple(part.strip() for part in self.text(name).split(",") if part.strip())
        for part in parts:
            host, _, port = part.rpartition(":") if ":" in part else (part, "", "0")
            if not host or "/" in part or not port.isdigit():
                raise SettingsError(f"{name} must list registries as host[:port], not {part!r}")
        return parts

    def file(self, name: str) -> Path | None:
        """An existing file, made absolute; unset: None."""
        value = self.text(name)
        if not value:
            return None
        if not Path(value).is_file():
            raise SettingsError(f"{name} must name a file, and {value!r} is none")
        return Path(value).absolute()

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self.text(name) or choices[0]
        if value not in choices:
            named = ", ".join(c for c in choices if c) + (" (or unset)" if "" in choices else "")
            raise SettingsError(f"{name} must be one of {named}, not {value!r}")
        return value

    def ipv4_network(self, name: str, default: str) -> str:
        value = self.text(name) or default
        try:
            ipaddress.IPv4Network(value)
        except ValueError:
            raise SettingsError(
                f"{name} must be an IPv4 network such as {default}, not {value!r}"
            ) from None
        return value

    def flag(self, name: str) -> bool:
        """`1` for on; `0` or unset for off."""
        return self.choice(name, ("", "0", "1")) == "1"

    def limit(self, name: str, default: int) -> int | None:
        """A count of at least 1, or `max` for none."""
        if self.text(name).strip() == "max":
            return None
        value = self.number(name, int)
        if value == 0:
            raise SettingsError(f"{name} must be at least 1 (or max), not {self.text(name)!r}")
        return default if value is None else value

    def number_or(self, name: str, default: float) -> float:
        value = self.number(name, float)
        return default if value is None else value

    def number(self, name: str, kind: type[_N]) -> _N | None:
        text = self.text(name)
        if not text:
            return None
        try:
            value = kind(text)
        except ValueError:
            raise SettingsError(f"{name} must be a number, not {text!r}") from None
        if value != value:
            raise SettingsError(f"{name} must be a number, not {text!r}")
        if value < 0:
            raise SettingsError(f"{name} must not be negative, not {text!r}")
        return value

    def key_pair(self, key: str, secret: str) -> tuple[str, str] | None:
        """Both set, or neither used."""
        if self.text(key) and self.text(secret):
            return self.text(key), self.text(secret)
        return None

    def ecr_endpoint(self) -> EcrEndpoint:
        """ECR's API as AWS clients find it: AWS_ENDPOINT_URL_ECR, else AWS_ENDPOINT_URL."""
        name = "AWS_ENDPOINT_URL_ECR" if self.text("AWS_ENDPOINT_URL_ECR") else "AWS_ENDPOINT_URL"
        url = self.text(name)
        if url and not url.startswith(("http://", "https://")):
            raise SettingsError(f"{name} must be an http:// or https:// address, not {url!r}")
        return EcrEndpoint(
            url=url.rstrip("/") or None,
            access_key_id=self.text("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=self.text("AWS_SECRET_ACCESS_KEY") or None,
            session_token=self.text("AWS_SESSION_TOKEN") or None,
        )

    def s3_endpoint(self, region: str) -> S3Endpoint | None:
        """The S3-compatible server configured the way AWS clients configure it, if any."""
        name = "AWS_ENDPOINT_URL_S3" if self.text("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
        url = self.text(name)
        if not url:
            return None
        if not url.startswith(("http://", "https://")):
            raise SettingsError(f"{name} must be an http:// or https:// address, not {url!r}")
        return S3Endpoint(
            url=url.rstrip("/"),
            access_key_id=self.text("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=self.text("AWS_SECRET_ACCESS_KEY") or None,
            session_token=self.text("AWS_SESSION_TOKEN") or None,
            region=region,
        )
