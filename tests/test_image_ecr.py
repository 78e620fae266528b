"""ECR registry tokens: an ECR image whose registry has no credentials configured is pulled
with a token from ECR's GetAuthorizationToken, asked through the configured AWS endpoint once
until it nears its end. No ECR can exist here: a stand-in of its JSON API answers the token
(tests/images_kit.py), and the ECR host name reaches a real registry on loopback (htpasswd
user AWS) through the /etc/hosts a skopeo shim gives the real skopeo."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from openmaker.runtime import unavailable_reason
from openmaker.runtime.images import PullError, image_store, parse_reference
from openmaker.settings import load_settings
from openmaker.training.service import TrainingJobs
from tests.helpers import request, stop_and_wait, unique_name, wait_for
from tests.images_kit import (
    PASSWORD,
    EcrStandIn,
    Registry,
    busybox_image,
    loopback_address,
    missing_tools,
    push,
    running_registry,
    skopeo_with_hosts,
)

pytestmark = pytest.mark.skipif(
    bool(missing_tools()) or os.geteuid() != 0, reason=f"needs root and {missing_tools()}"
)
ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """The registry an ECR host name reaches: port 80 of a loopback address, user AWS."""
    folder = tmp_path_factory.mktemp("ecr-registry")
    with running_registry(folder / "registry", loopback_address(), 80, "AWS") as running:
        busybox_image(folder / "layout", "base", config=("--config.entrypoint=/bin/sh",))
        push(folder / "layout", "base", running, "team/algo:1")
        busybox_image(folder / "layout", "two", base="base", files={"two.txt": "2"})
        push(folder / "layout", "two", running, "team/algo:2")
        yield running


@pytest.fixture
def ecr(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EcrStandIn]:
    """ECR's API stand-in as AWS_ENDPOINT_URL_ECR; skopeo resolving ECR to the registry."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    skopeo_with_hosts(bin_dir, f"127.0.0.1 localhost\n{registry.host} {ECR}\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    stand_in = EcrStandIn(PASSWORD)
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", stand_in.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")
    monkeypatch.setenv("OPENMAKER_INSECURE_REGISTRIES", ECR)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "no-auth.json"))  # no credentials
    try:
        yield stand_in
    finally:
        stand_in.close()


def test_token_is_fetched_once_kept_private_and_refreshed_at_its_end(
    tmp_path: Path, ecr: EcrStandIn
) -> None:
    settings = load_settings({**os.environ, "OPENMAKER_HOME": str(tmp_path / "home")})
    assert settings.ecr.url == ecr.url
    store = image_store(settings)
    first = store.prepare(parse_reference(f"{ECR}/team/algo:1"), lambda line: None)
    second = store.prepare(parse_reference(f"{ECR}/team/algo:2"), lambda line: None)
    assert first.rootfs.joinpath("bin/busybox").is_file()
    assert second.rootfs.joinpath("two.txt").read_text() == "2"
    assert ecr.calls == 1  # one token for both pulls
    command_lines = (tmp_path / "bin" / "argv.log").read_text()
    token = base64.b64encode(f"AWS:{PASSWORD}".encode()).decode()
    assert "copy" in command_lines and PASSWORD not in command_lines and token not in command_lines
    cached = settings.home / "images" / "ecr" / f"{ECR}.json"
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    assert stat.S_IMODE(cached.parent.stat().st_mode) == 0o700
    # Only the token file stays: the auth files skopeo was given lasted one command each.
    assert sorted(path.name for path in cached.parent.iterdir()) == [f"{ECR}.json", f"{ECR}.lock"]
    # Twelve hours later: the kept token has ended, and the next pull asks for a new one.
    data = json.loads(cached.read_text())
    cached.write_text(json.dumps({**data, "expires": data["expires"] - 12 * 3600}))
    store.prepare(parse_reference(f"{ECR}/team/algo:1"), lambda line: None)
    assert ecr.calls == 2
    assert json.loads(cached.read_text())["expires"] > data["expires"] - 3600


def test_a_denied_token_fails_the_pull_with_ecrs_answer(tmp_path: Path, ecr: EcrStandIn) -> None:
    ecr.deny = True
    store = image_store(load_settings({**os.environ, "OPENMAKER_HOME": str(tmp_path / "h")}))
    with pytest.raises(PullError) as raised:
        store.prepare(parse_reference(f"{ECR}/team/algo:1"), lambda line: None)
    message = str(raised.value)
    assert message.startswith(f"Cannot pull {ECR}/team/algo:1: ECR refused a registry token ")
    assert "AccessDeniedException: User is not authorized" in message


@pytest.mark.skipif(unavailable_reason() is not None, reason="needs the sandbox")
def test_a_training_job_fails_with_a_client_error_when_ecr_denies_the_token(
    home: Path, ecr: EcrStandIn
) -> None:
    ecr.deny = True
    jobs = TrainingJobs()
    name = unique_name("ecr")
    try:
        jobs.create(request(name, f"{ECR}/team/algo:1", "s3://out/jobs"))
        description = wait_for(jobs, name, timeout=120)
    finally:
        stop_and_wait(jobs, [name])
    assert description["TrainingJobStatus"] == "Failed"
    reason = str(description["FailureReason"])
    assert reason.startswith(f"ClientError: Cannot pull {ECR}/team/algo:1: ECR refused"), reason
    assert "AccessDeniedException" in reason and "Traceback" not in reason
