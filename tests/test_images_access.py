"""How pulls reach registries: Docker credential helpers (`credHelpers`, `credsStore`) called
by skopeo with no secret on its command line, a clear error for an ECR image with no
credentials, and registries.conf mirrors named by OPENMAKER_REGISTRIES_CONF — against a real
registry on loopback (htpasswd auth) and the real skopeo, whose command lines a shim records."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from openmaker.runtime.images import (
    ImageStore,
    PullError,
    RegistryAccess,
    image_store,
    parse_reference,
)
from openmaker.settings import SettingsError, from_json, load_settings, to_json
from openmaker.training.host.spec import HostSettings
from tests.images_kit import (
    PASSWORD,
    USER,
    Registry,
    busybox_image,
    missing_tools,
    push,
    running_registry,
)

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"needs {missing_tools()}")
ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    folder = tmp_path_factory.mktemp("registry")
    with running_registry(folder / "registry") as running:
        busybox_image(folder / "layout", "base", config=("--config.entrypoint=/bin/sh",))
        push(folder / "layout", "base", running, "team/algo:1")
        yield running


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder first on PATH with a credential helper `docker-credential-omtest` (answering
    with the password in $tmp/secret, logging what it was asked) and a `skopeo` shim logging
    its command lines before running the real one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "secret").write_text(PASSWORD)
    helper = bin_dir / "docker-credential-omtest"
    helper.write_text(
        "#!/bin/sh\n"
        f'read server; echo "$1 $server" >> {tmp_path}/helper.log\n'
        f'printf \'{{"ServerURL":"%s","Username":"{USER}","Secret":"%s"}}\' '
        f'"$server" "$(cat {tmp_path}/secret)"\n'
    )
    real = next(
        Path(folder) / "skopeo"
        for folder in os.environ["PATH"].split(":")
        if (Path(folder) / "skopeo").is_file()
    )
    shim = bin_dir / "skopeo"
    shim.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/skopeo.log\nexec {real} "$@"\n')
    helper.chmod(0o755)
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    # The credsStore copy of the auth file goes here, where the test can look.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path


def _store(tmp_path: Path, access: RegistryAccess) -> ImageStore:
    return ImageStore(tmp_path / "images", access)


def _auth(tmp_path: Path, config: Mapping[str, object]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("key", ["credHelpers", "credsStore"])
def test_credential_helper_is_called_and_no_secret_is_on_a_command_line(
    tools: Path, registry: Registry, key: str
) -> None:
    config = {key: {registry.host: "omtest"} if key == "credHelpers" else "omtest"}
    access = RegistryAccess(_auth(tools, config), (registry.host,))
    image = _store(tools, access).prepare(
        parse_reference(f"{registry.host}/team/algo:1"), lambda line: None
    )
    assert image.rootfs.joinpath("bin/busybox").is_file()
    assert f"get {registry.host}" in (tools / "helper.log").read_text()
    command_lines = (tools / "skopeo.log").read_text()
    assert "copy" in command_lines and PASSWORD not in command_lines
    assert list((tools / "tmp").iterdir()) == []  # the credsStore copy lasted one command


def test_a_helper_with_a_wrong_password_is_refused(tools: Path, registry: Registry) -> None:
    (tools / "secret").write_text("wrong")
    auth = _auth(tools, {"credHelpers": {registry.host: "omtest"}})
    access = RegistryAccess(auth, (registry.host,))
    with pytest.raises(PullError, match="refused access") as raised:
        _store(tools, access).prepare(
            parse_reference(f"{registry.host}/team/algo:1"), lambda line: None
        )
    assert "wrong" not in str(raised.value)


def test_ecr_image_without_credentials_says_how_to_give_them(tools: Path) -> None:
    access = RegistryAccess(_auth(tools, {"auths": {}}))
    with pytest.raises(PullError) as raised:
        _store(tools, access).prepare(parse_reference(f"{ECR}/algo:1"), lambda line: None)
    message = str(raised.value)
    assert f"no credentials are configured for the ECR registry {ECR}" in message
    assert "docker-credential-ecr-login" in message and "REGISTRY_AUTH_FILE" not in message
    assert message.startswith(f"Cannot pull {ECR}/algo:1: ")


def test_ecr_uri_is_served_through_a_mirror(tools: Path, registry: Registry) -> None:
    conf = tools / "registries.conf"
    conf.write_text(
        f'[[registry]]\nprefix = "{ECR}"\nlocation = "{ECR}"\n'
        f'[[registry.mirror]]\nlocation = "{registry.host}"\ninsecure = true\n'
    )
    settings = load_settings(
        {
            "OPENMAKER_HOME": str(tools / "home"),
            "REGISTRY_AUTH_FILE": str(registry.auth_file),
            "OPENMAKER_REGISTRIES_CONF": str(conf),
        }
    )
    # The setting crosses to a job's worker and to its hosts.
    assert from_json(to_json(settings)).registries_conf == conf
    host = HostSettings.of(settings)
    assert host.registries_conf == conf
    image = image_store(host).prepare(parse_reference(f"{ECR}/team/algo:1"), lambda line: None)
    assert image.rootfs.joinpath("bin/busybox").is_file()
    assert "/v2/team/algo/manifests/" in registry.log.read_text()
    # Without the mirror, the same reference is an ECR image nobody gave credentials for.
    plain = RegistryAccess(registry.auth_file)
    with pytest.raises(PullError, match="no credentials are configured for the ECR"):
        _store(tools / "other", plain).prepare(
            parse_reference(f"{ECR}/team/algo:1"), lambda line: None
        )


def test_registries_conf_setting_must_name_a_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="OPENMAKER_REGISTRIES_CONF"):
        load_settings({"OPENMAKER_REGISTRIES_CONF": str(tmp_path / "missing.conf")})
