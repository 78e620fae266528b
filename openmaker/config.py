"""Where openmaker keeps its state and which account and region it speaks for."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path
    region: str
    account_id: str

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.home / 'openmaker.db'}"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def embedded_s3_dir(self) -> Path:
        """The folder that `s3://bucket/key` maps onto when no S3 endpoint is configured."""
        return self.home / "s3"


def load_settings() -> Settings:
    home = Path(os.environ.get("OPENMAKER_HOME") or Path.home() / ".openmaker").absolute()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    # SageMaker ARNs need a 12-digit account; openmaker has none, so it uses a fixed one.
    account_id = os.environ.get("OPENMAKER_ACCOUNT_ID", "000000000000")
    return Settings(home=home, region=region, account_id=account_id)
