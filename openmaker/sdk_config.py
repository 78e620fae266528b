"""The sagemaker SDK's own configuration file, written by `openmaker env`.

Some of what the SDK does never looks at endpoint variables: its telemetry, its default
bucket's name and the execution role an estimator gets without one. `openmaker env` names
this file in `SAGEMAKER_ADMIN_CONFIG_OVERRIDE` (the machine-wide file the SDK reads; a user's
own `~/.config/sagemaker/config.yaml` still applies over it), with:

- `TelemetryOptOut` (SDK v2 and v3): nothing is sent to AWS about what the code calls;
- `Session.DefaultS3Bucket`: `sagemaker-<region>-<account>`, the name the SDK would make
  itself, so `default_bucket()` needs no STS call to find it;
- `TrainingJob.RoleArn`: the server's role, for estimators and trainers made without one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from openmaker.settings import Settings
from openmaker.shapes.arn import EXECUTION_ROLE, role_arn

FILE_NAME = "sagemaker-config.yaml"


def default_bucket(settings: Settings) -> str:
    return f"sagemaker-{settings.region}-{settings.account_id}"


def sdk_config(settings: Settings) -> dict[str, Any]:
    return {
        "SchemaVersion": "1.0",
        "SageMaker": {
            "PythonSDK": {
                "Modules": {
                    "TelemetryOptOut": True,
                    "Session": {"DefaultS3Bucket": default_bucket(settings)},
                }
            },
            "TrainingJob": {"RoleArn": role_arn(EXECUTION_ROLE, settings.account_id)},
        },
    }


def write_sdk_config(settings: Settings) -> Path:
    """The file in OPENMAKER_HOME, replaced whole (JSON, which YAML readers read as YAML)."""
    path = settings.home / FILE_NAME
    temporary = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(json.dumps(sdk_config(settings), indent=2) + "\n")
    temporary.replace(path)
    return path
