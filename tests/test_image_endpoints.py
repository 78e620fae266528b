"""An endpoint whose model's `PrimaryContainer.Image` is a registry image: a real `openmaker
server`, a real registry on loopback, boto3. The image's ENTRYPOINT runs with `serve`, as its
USER, and answers InvokeEndpoint; an image the registry lacks fails the endpoint, saying so;
DeleteEndpoint during a pull that would never end (a registry front holding every layer
download) interrupts it."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer, running_api_server
from tests.helpers import unique_name
from tests.images_kit import (
    PASSWORD,
    USER,
    Registry,
    StallingProxy,
    busybox_image,
    missing_tools,
    push,
    running_registry,
    write_auth_file,
)
from tests.test_endpoints import Deployer, model_archive, wait_until
from tests.test_image_stops import skopeo_processes

pytestmark = [
    pytest.mark.skipif(bool(missing_tools()), reason=f"needs {missing_tools()}"),
    pytest.mark.skipif(unavailable_reason() is not None, reason="needs the sandbox"),
]

# One HTTP exchange on the socket busybox's nc hands it: /ping, /invocations.
HANDLER = """read -r method path proto
length=0
while read -r line; do
  line=$(echo "$line" | busybox tr -d '\\r')
  [ -z "$line" ] && break
  case "$line" in [Cc]ontent-[Ll]ength:*) length=${line#*: };; esac
done
body=$(busybox head -c "$length")
answer=""
[ "$path" = /ping ] || answer="$(cat /opt/ml/model/weights.txt) $GREETING $(id -u) $(pwd) $body"
printf 'HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: %s\\r\\n' "${#answer}"
printf 'Connection: close\\r\\n\\r\\n%s' "$answer"
"""
SERVER = "exec busybox nc -ll -p 8080 -e /bin/sh /srv/handler.sh"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nmodel:x:4321:4321::/srv:/bin/sh\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, Registry]]:
    folder = tmp_path_factory.mktemp("served")
    with running_registry(folder / "registry") as registry:
        layout = folder / "layout"
        busybox_image(
            layout, "server", files={"srv/handler.sh": HANDLER, "etc/passwd": PASSWD},
            config=("--config.entrypoint=/bin/sh", "--config.entrypoint=-c",
                    f"--config.entrypoint={SERVER}", "--config.entrypoint=ep",
                    "--config.user=model", "--config.workingdir=/srv"),
        )  # fmt: skip
        push(layout, "server", registry, "team/server:1")
        # An image no other test pulls (the server's store keeps what it pulled by digest).
        # Its own layer is larger than what the front lets through before it holds a download.
        noise = secrets.token_hex(64 * 1024)
        busybox_image(layout, "slow", base="server", files={"srv/slow.txt": noise})
        push(layout, "slow", registry, "team/slow:1")
        proxy = StallingProxy(registry.host)
        auth = folder / "auth.json"
        write_auth_file(auth, proxy.host, USER, PASSWORD)
        both = json.loads(auth.read_text())
        both["auths"].update(json.loads(registry.auth_file.read_text())["auths"])
        auth.write_text(json.dumps(both))
        try:
            with running_api_server(
                folder / "home",
                OPENMAKER_FILE_ROOTS=str(folder),
                REGISTRY_AUTH_FILE=str(auth),
                OPENMAKER_INSECURE_REGISTRIES=f"{registry.host},{proxy.host}",
            ) as server:
                registry.proxy = proxy  # type: ignore[attr-defined]
                yield server, registry
        finally:
            proxy.close()


@pytest.fixture
def deployer(served: tuple[ApiServer, Registry], tmp_path: Path) -> Iterator[Deployer]:
    deploy = Deployer(served[0], tmp_path)
    try:
        yield deploy
    finally:
        deploy.delete_all()


def _model(deployer: Deployer, image: str) -> str:
    name = unique_name("model")
    with contextlib.suppress(ClientError):
        deployer.s3.create_bucket(Bucket="models")
    archive = model_archive({"weights.txt": b"w42\n"})
    deployer.s3.put_object(Bucket="models", Key=f"{name}/model.tar.gz", Body=archive)
    deployer.sagemaker.create_model(
        ModelName=name,
        PrimaryContainer={
            "Image": image,
            "ModelDataUrl": f"s3://models/{name}/model.tar.gz",
            "Environment": {"GREETING": "hello"},
        },
        ExecutionRoleArn="arn:aws:iam::000000000000:role/openmaker",
    )
    return name


def test_an_endpoint_serves_a_registry_image(
    deployer: Deployer, served: tuple[ApiServer, Registry]
) -> None:
    registry = served[1]
    name = deployer.endpoint(_model(deployer, f"{registry.host}/team/server:1"))
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    answer = deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"data")
    assert answer["Body"].read() == b"w42 hello 4321 /srv data"  # as its USER, in its WORKDIR


def test_an_image_the_registry_lacks_fails_the_endpoint(
    deployer: Deployer, served: tuple[ApiServer, Registry]
) -> None:
    registry = served[1]
    name = deployer.endpoint(_model(deployer, f"{registry.host}/team/none:1"))
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "Failed"
    reason = described["FailureReason"]
    assert f"Cannot pull {registry.host}/team/none:1" in reason and "no such image" in reason


def test_a_malformed_image_is_refused_at_create_model(deployer: Deployer) -> None:
    with pytest.raises(ClientError) as refused:
        _model(deployer, "registry.example/Bad:1")
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "PrimaryContainer.Image" in refused.value.response["Error"]["Message"]


def test_delete_endpoint_during_a_pull_interrupts_it(
    deployer: Deployer, served: tuple[ApiServer, Registry]
) -> None:
    proxy: StallingProxy = served[1].proxy  # type: ignore[attr-defined]
    name = deployer.endpoint(_model(deployer, f"{proxy.host}/team/slow:1"))
    assert proxy.stalled.wait(120), deployer.sagemaker.describe_endpoint(EndpointName=name)
    assert skopeo_processes(proxy.host)
    deployer.sagemaker.delete_endpoint(EndpointName=name)
    wait_until(partial(deployer.gone, name), f"endpoint {name} deleted")
    wait_until(lambda: not skopeo_processes(proxy.host), "the pull's end")
