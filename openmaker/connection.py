"""Where a running `openmaker server` listens, and the environment that points AWS clients at it.

The server records its addresses in `$OPENMAKER_HOME/server.json` while it runs; `openmaker env`
turns that record (and the server's key pair) into the variables botocore reads.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from openmaker.settings import Settings, client_plugins

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7070  # the SageMaker, runtime and CloudWatch Logs APIs
DEFAULT_S3_PORT = 7071  # the embedded store's S3 endpoint
BOTOCORE_PLUGINS = "BOTOCORE_EXPERIMENTAL__PLUGINS"
OPENMAKER_PLUGIN = "openmaker=openmaker.botocore_plugin"


@dataclass(frozen=True)
class ServerRecord:
    api_url: str
    # None when the server uses an S3 endpoint configured elsewhere (AWS_ENDPOINT_URL_S3).
    s3_url: str | None
    pid: int
    # The access key ID the server checks signatures against (never the secret), so that
    # `openmaker env` can tell when it cannot know the pair.
    access_key_id: str | None = None
    # The S3 gate its jobs' code and Ray hosts are given (None: none).
    gate_url: str | None = None


def record_path(settings: Settings) -> Path:
    return settings.home / "server.json"


def write_record(settings: Settings, record: ServerRecord) -> None:
    path = record_path(settings)
    temporary = path.with_name(f".server.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(json.dumps(asdict(record)))
    temporary.replace(path)


def read_record(settings: Settings) -> ServerRecord | None:
    """The running server's record; None when none runs (a stale record is ignored)."""
    try:
        record = ServerRecord(**json.loads(record_path(settings).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None
    return record if Path(f"/proc/{record.pid}").exists() else None


def with_current_gate(settings: Settings) -> Settings:
    """`settings` with the gate of the server running now. A job's next attempt is started by
    its previous attempt's worker, which may have outlived the server it was started under;
    the server started since may serve its gate elsewhere (another port or address)."""
    record = read_record(settings)
    if record is None or record.gate_url is None or record.gate_url == settings.gate_url:
        return settings
    return replace(settings, gate_url=record.gate_url)


def remove_record(settings: Settings) -> None:
    path = record_path(settings)
    try:
        record = ServerRecord(**json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return
    if record.pid == os.getpid():
        path.unlink(missing_ok=True)


def client_environment(
    record: ServerRecord,
    access_key_id: str,
    secret_access_key: str,
    region: str,
    sdk_config: Path | None = None,
) -> dict[str, str]:
    """The variables that point boto3, the aws CLI and the sagemaker SDK at the server
    (`sdk_config`: the sagemaker SDK's configuration file for it, see openmaker/sdk_config.py)."""
    env = {
        "AWS_ENDPOINT_URL_SAGEMAKER": record.api_url,
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": record.api_url,
        "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": record.api_url,
        # Metric history: TrainingJobAnalytics, GetMetricStatistics, BatchGetMetrics.
        "AWS_ENDPOINT_URL_CLOUDWATCH": record.api_url,
        "AWS_ENDPOINT_URL_SAGEMAKER_METRICS": record.api_url,
        "AWS_ENDPOINT_URL_STS": record.api_url,
        "AWS_ENDPOINT_URL_IAM": record.api_url,
        # Clients made with an explicit AWS endpoint (the SDKs' STS client) come here too.
        BOTOCORE_PLUGINS: _with_plugin(client_plugins()),
    }
    if sdk_config is not None:
        env["SAGEMAKER_ADMIN_CONFIG_OVERRIDE"] = str(sdk_config)
    if record.s3_url:
        env["AWS_ENDPOINT_URL_S3"] = record.s3_url
    env.update(
        {
            "AWS_ACCESS_KEY_ID": access_key_id,
            "AWS_SECRET_ACCESS_KEY": secret_access_key,
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
        }
    )
    return env


def _with_plugin(plugins: str) -> str:
    """botocore's `name=module,...` list with openmaker's plugin in it (once)."""
    entries = [p for p in plugins.split(",") if p.strip() and p.strip() != "DISABLED"]
    if OPENMAKER_PLUGIN not in (p.replace(" ", "") for p in entries):
        entries.append(OPENMAKER_PLUGIN)
    return ",".join(entries)


def server_configured(settings: Settings) -> bool:
    """Whether this process's AWS clients are pointed at a SageMaker endpoint (a server)."""
    return settings.sagemaker_endpoint is not None
