"""Images from a real registry (Debian's docker-registry on loopback, htpasswd auth, plain
HTTP), built offline with umoci over busybox-static and pushed with skopeo; pulled into one
layout, unpacked once, and run by the runtime's Container as Docker would run them."""

from __future__ import annotations

import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from openmaker.runtime import Bind, Container, ContainerSpec, unavailable_reason
from openmaker.runtime.images import (
    Image,
    ImageStore,
    PullError,
    RegistryAccess,
    image_container,
    parse_reference,
)
from openmaker.runtime.images.layout import Layout
from tests.images_kit import (
    Registry,
    busybox_image,
    busybox_layer,
    dir_member,
    file_member,
    layer_digests,
    link_member,
    missing_tools,
    push,
    raw_image,
    running_registry,
    tar_layer,
    write_auth_file,
)

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"needs {missing_tools()}")
sandboxed = pytest.mark.skipif(unavailable_reason() is not None, reason="needs the sandbox")

# The test image's program: what Docker would show it of itself.
REPORT = (
    'echo "args:$*"; echo "ids:$(id -u):$(id -g):$(id -G)"; echo "cwd:$(pwd)"; '
    'echo "env:$A:$B:$HOME"; grep CapEff /proc/self/status; '
    'touch /opt/ml/written && stat -c "owner:%u" /opt/ml/written; '
    'touch /bin/new || echo "bin:refused"'
)
PASSWD = "root:x:0:0:root:/root:/bin/sh\nalice:x:1234:2345::/home/alice:/bin/sh\n"
PASSWD += "admin:x:0:0:looks like root:/:/bin/sh\n"
GROUP = "root:x:0:\nteam:x:2345:\nextra:x:777:bob,alice\n"
# The runtime's default capabilities (runtime/spec.py) as /proc shows them.
DEFAULT_CAPS = "00000000a00405fb"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    folder = tmp_path_factory.mktemp("registry")
    with running_registry(folder / "registry") as running:
        layout = folder / "layout"
        entrypoint = [f"--config.entrypoint={part}" for part in ("/bin/sh", "-c", REPORT, "ep")]
        busybox_image(
            layout,
            "base",
            files={"etc/passwd": PASSWD, "etc/group": GROUP},
            config=(*entrypoint, "--config.cmd=not-this", "--config.env=A=image",
                    "--config.env=B=image", "--config.workingdir=/srv/work",
                    "--config.user=alice"),
        )  # fmt: skip
        push(layout, "base", running, "team/algo:1")
        # A second image sharing the first's layer, with USER naming uid 0 under another name.
        busybox_image(
            layout, "admin", base="base", files={"extra.txt": "x"},
            config=("--config.user=admin",),
        )  # fmt: skip
        push(layout, "admin", running, "team/admin:1")
        running.layout = layout  # type: ignore[attr-defined]
        yield running


def _store(tmp_path: Path, registry: Registry, auth: Path | None = None) -> ImageStore:
    access = RegistryAccess(auth or registry.auth_file, (registry.host,))
    return ImageStore(tmp_path / "images", access)


def _pull(store: ImageStore, text: str) -> tuple[Image, list[str]]:
    progress: list[str] = []
    return store.prepare(parse_reference(text), progress.append), progress


def _run(image: Image, tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    ml = tmp_path / "ml"
    ml.mkdir(exist_ok=True)
    ml.chmod(0o777)  # the image's user is not root
    run = image_container(image, "train", env or {})
    spec = ContainerSpec(
        argv=run.argv,
        env=run.env,
        state_dir=tmp_path / "state",
        layers=(run.rootfs,),
        workdir=run.workdir,
        user=run.user,
        binds=(Bind(str(ml), "/opt/ml", read_only=False),),
    )
    lines: list[str] = []
    container = Container(spec)
    container.start(lambda when, new, size: lines.extend(new))
    try:
        assert container.wait(60) == 0, lines
    finally:
        if container.poll() is None:
            container.kill()
    return lines


def test_pull_by_tag_and_digest_each_layer_fetched_once(tmp_path: Path, registry: Registry) -> None:
    store = _store(tmp_path, registry)
    shared = layer_digests(registry.layout, "base")[0]  # type: ignore[attr-defined]
    before = registry.blob_fetches(shared)
    image, progress = _pull(store, f"{registry.host}/team/algo:1")
    assert (image.rootfs / "bin" / "busybox").is_file()
    assert image.config.user == "alice" and image.config.workdir == "/srv/work"
    assert any(line.startswith("layer 1 of 1: sha256:") for line in progress), progress
    # The second image shares the first's layer: only its own layer is fetched.
    admin, progress = _pull(store, f"{registry.host}/team/admin:1")
    assert "layer 2 of 2" in progress[-2], progress
    assert (admin.rootfs / "extra.txt").is_file() and admin.digest != image.digest
    # By digest: nothing to copy, the same root filesystem.
    pinned, progress = _pull(store, f"{registry.host}/team/algo@{image.digest}")
    assert pinned.rootfs == image.rootfs and not any("pulling" in line for line in progress)
    again, _ = _pull(store, f"{registry.host}/team/algo:1")
    assert again.rootfs == image.rootfs
    assert registry.blob_fetches(shared) - before == 1
    assert set(Layout(tmp_path / "images" / "oci").names()) >= {
        f"r-{image.digest.replace(':', '-')}",
        f"r-{admin.digest.replace(':', '-')}",
    }


def test_concurrent_pulls_pull_once_and_lose_no_image(tmp_path: Path, registry: Registry) -> None:
    store = _store(tmp_path, registry)
    shared = layer_digests(registry.layout, "base")[0]  # type: ignore[attr-defined]
    before = registry.blob_fetches(shared)
    names = [f"{registry.host}/team/algo:1"] * 3 + [f"{registry.host}/team/admin:1"] * 2
    results: list[Image] = []
    errors: list[BaseException] = []

    def pull(text: str) -> None:
        try:
            results.append(_pull(ImageStore(store.folder, store.access), text)[0])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=pull, args=(text,)) for text in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len({image.rootfs for image in results}) == 2
    assert registry.blob_fetches(shared) - before == 1
    assert len(Layout(store.layout.folder).names()) == 2  # index.json kept both images


def test_pull_failures_name_the_image_and_the_reason(tmp_path: Path, registry: Registry) -> None:
    wrong = tmp_path / "wrong.json"
    write_auth_file(wrong, registry.host, "tester", "not-the-password")
    cases = [
        (_store(tmp_path, registry, wrong), f"{registry.host}/team/algo:1", "refused access"),
        (_store(tmp_path, registry), f"{registry.host}/team/none:1", "has no such image"),
        (_store(tmp_path, registry), f"{registry.host}/team/algo:nope", "has no such image"),
        (ImageStore(tmp_path / "i", RegistryAccess(registry.auth_file)),
         f"{registry.host}/team/algo:1", "OPENMAKER_INSECURE_REGISTRIES"),
        (ImageStore(tmp_path / "i", RegistryAccess(None, ("127.0.0.1:9",))),
         "127.0.0.1:9/team/algo:1", "could not be reached"),
    ]  # fmt: skip
    for store, text, reason in cases:
        with pytest.raises(PullError) as raised:
            _pull(store, text)
        message = str(raised.value)
        assert message.startswith(f"Cannot pull {parse_reference(text)}: ") and reason in message
        assert "not-the-password" not in message and "s3cret" not in message


def test_archives_and_layouts(tmp_path: Path, registry: Registry) -> None:
    layout = registry.layout  # type: ignore[attr-defined]
    docker_archive, oci_archive = tmp_path / "docker.tar", tmp_path / "oci.tar"
    for destination in (
        f"docker-archive:{docker_archive}:team/algo:1",
        f"oci-archive:{oci_archive}",
    ):
        subprocess.run(["skopeo", "copy", f"oci:{layout}:base", destination], check=True,
                       capture_output=True)  # fmt: skip
    store = _store(tmp_path, registry)
    for text in (f"docker-archive:{docker_archive}", f"oci-archive:{oci_archive}",
                 f"oci:{layout}:base"):  # fmt: skip
        image, _ = _pull(store, text)
        assert (image.rootfs / "bin" / "busybox").is_file(), text
        assert image.config.entrypoint[0] == "/bin/sh" and image.config.user == "alice", text
    assert len(Layout(store.layout.folder).names()) == 3
    with pytest.raises(PullError, match="No such file"):
        _pull(store, f"oci-archive:{tmp_path / 'missing.tar'}")


def test_zstd_layers_unpack(tmp_path: Path, registry: Registry) -> None:
    layout = tmp_path / "zstd-layout"
    files = tar_layer([dir_member("etc"), file_member("etc/hello", b"from zstd\n")])
    raw_image(layout, "z", [busybox_layer(), files], "zstd",
              {"Entrypoint": ["/bin/cat", "/etc/hello"]})  # fmt: skip
    push(layout, "z", registry, "team/zstd:1")
    image, progress = _pull(_store(tmp_path, registry), f"{registry.host}/team/zstd:1")
    assert "decompressing zstd layers" in progress
    assert (image.rootfs / "etc" / "hello").read_text() == "from zstd\n"


@sandboxed
def test_runs_as_docker_would(tmp_path: Path, registry: Registry) -> None:
    image, _ = _pull(_store(tmp_path, registry), f"{registry.host}/team/algo:1")
    lines = _run(image, tmp_path, {"B": "request"})
    assert "args:train" in lines  # ENTRYPOINT kept, `train` in CMD's place
    assert "ids:1234:2345:2345 777" in lines  # USER through the image's passwd and group
    assert "cwd:/srv/work" in lines  # WORKDIR, made although the image lacks it
    assert "env:image:request:/home/alice" in lines  # ENV under the request's; HOME
    assert "CapEff:\t0000000000000000" in lines  # not root: no capabilities
    assert "owner:1234" in lines and (tmp_path / "ml" / "written").stat().st_uid == 1234
    assert "bin:refused" in lines  # the image's /bin is root's
    assert not (image.rootfs / "srv").exists()  # the unpacked root is never written


@sandboxed
def test_root_by_another_name_gets_only_the_runtimes_capabilities(
    tmp_path: Path, registry: Registry
) -> None:
    image, _ = _pull(_store(tmp_path, registry), f"{registry.host}/team/admin:1")
    lines = _run(image, tmp_path)
    assert "ids:0:0:0" in lines and "bin:refused" not in lines
    assert f"CapEff:\t{DEFAULT_CAPS}" in lines
    # Root may write its copy-on-write root; the shared unpacked root stays as it was.
    assert not (image.rootfs / "bin" / "new").exists()


def test_hostile_layers_do_not_write_outside(tmp_path: Path, registry: Registry) -> None:
    """Layers that climb out with `..`, or through absolute and relative symbolic links, land
    inside the unpacked root (umoci resolves every path within it) or fail the unpack."""
    outside = tmp_path / "outside"
    outside.mkdir()
    first = tar_layer([
        link_member("abs", str(outside)),
        link_member("rel", "../../../../../../../../" + str(outside).lstrip("/")),
        dir_member("etc"),
    ])  # fmt: skip
    second = tar_layer([
        file_member("abs/through-absolute", b"x"),
        file_member("rel/through-relative", b"x"),
        file_member("../../../../../../../.." + str(outside) + "/dotdot", b"x"),
    ])  # fmt: skip
    layout = tmp_path / "hostile"
    raw_image(layout, "h", [busybox_layer(), first, second], "gzip", {"Entrypoint": ["/bin/sh"]})
    store = _store(tmp_path, registry)
    try:
        image, _ = _pull(store, f"oci:{layout}:h")
    except PullError:
        image = None
    assert list(outside.iterdir()) == []
    if image is not None:
        found = {path.name for path in image.rootfs.rglob("*") if not path.is_symlink()}
        assert {"through-absolute", "through-relative", "dotdot"} <= found


def test_hostile_tar_fixture_is_well_formed() -> None:
    """The hostile layer really carries what it claims (the test above would pass vacuously
    on a layer that tarfile silently dropped)."""
    layer = tar_layer([file_member("../escape", b"x"), link_member("abs", "/etc")])
    import io

    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        assert [m.name for m in tar.getmembers()] == ["../escape", "abs"]
