"""The image layer's pure parts: references as users write them, an image's config turned into
what runs, USER resolved through the image's own files (never the machine's), and the GPU
passthrough plan over a fake device tree (no GPU here)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from openmaker.runtime.images.config import DEFAULT_PATH, ImageConfig, command, stop_signal
from openmaker.runtime.images.gpus import LIBRARY_TARGET, plan_gpus
from openmaker.runtime.images.reference import ReferenceError, parse_reference
from openmaker.runtime.images.users import UserError, inside, resolve_user
from openmaker.runtime.spec import User
from openmaker.settings import SettingsError, load_settings

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("python", "docker://docker.io/library/python:latest"),
        ("python:3.11-slim", "docker://docker.io/library/python:3.11-slim"),
        ("user/repo", "docker://docker.io/user/repo:latest"),
        ("docker://user/repo:1", "docker://docker.io/user/repo:1"),
        (
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/algo:1",
            "docker://123456789012.dkr.ecr.us-east-1.amazonaws.com/algo:1",
        ),
        ("127.0.0.1:5000/team/algo:v2", "docker://127.0.0.1:5000/team/algo:v2"),
        ("localhost/algo", "docker://localhost/algo:latest"),
        ("localhost:5000/a/b/c", "docker://localhost:5000/a/b/c:latest"),
        (f"registry.example/algo@{DIGEST}", f"docker://registry.example/algo@{DIGEST}"),
        (f"host:5000/algo:1@{DIGEST}", f"docker://host:5000/algo:1@{DIGEST}"),
        ("oci-archive:/data/img.tar", "oci-archive:/data/img.tar"),
        ("docker-archive:/data/img.tar:algo:1", "docker-archive:/data/img.tar:algo:1"),
        ("oci:/data/layout:train", "oci:/data/layout:train"),
        ("/data/layout", "oci:/data/layout"),
    ],
)
def test_references_in_every_form(text: str, expected: str) -> None:
    assert parse_reference(text).skopeo_name() == expected


def test_a_digest_reference_pulls_by_digest_alone() -> None:
    reference = parse_reference(f"127.0.0.1:5000/algo:1@{DIGEST}")
    assert (reference.registry, reference.repository) == ("127.0.0.1:5000", "algo")
    assert (reference.tag, reference.digest) == ("1", DIGEST)
    assert reference.by_digest() == f"docker://127.0.0.1:5000/algo@{DIGEST}"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "not an image reference"),
        (" python", "not an image reference"),
        ("Python", "not a repository name"),
        ("repo:", "not a tag"),
        ("repo:bad tag", "not a tag"),
        ("repo@sha256:1234", "not a digest"),
        ("host:5000/", "not a repository name"),
        ("host:notaport/repo", "not a registry"),
        ("a//b", "not a repository name"),
        ("oci-archive:", "names no file"),
        ("x" * 300, "over 255"),
        ("repo:" + "t" * 200, "not a tag"),
    ],
)
def test_malformed_references_say_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(ReferenceError, match=complaint):
        parse_reference(text)


def test_train_replaces_cmd_after_the_entrypoint() -> None:
    config = ImageConfig.from_json(
        {
            "config": {
                "Entrypoint": ["/bin/run"],
                "Cmd": ["--default"],
                "Env": ["A=1", "B=image", "EQ=x=y"],
                "WorkingDir": "/srv",
            }
        }
    )
    run = command(config, "train", {"B": "caller"})
    assert run.argv == ["/bin/run", "train"]
    assert run.env == {"PATH": DEFAULT_PATH, "A": "1", "B": "caller", "EQ": "x=y"}
    assert run.workdir == "/srv"
    assert command(config, "serve", {}).argv == ["/bin/run", "serve"]
    # Arguments replace `train`; an entrypoint override drops the image's and appends nothing.
    assert command(config, "train", {}, arguments=["--epochs", "2"]).argv == [
        "/bin/run", "--epochs", "2",
    ]  # fmt: skip
    assert command(config, "train", {}, entrypoint=["python", "t.py"]).argv == ["python", "t.py"]
    both = command(config, "train", {}, entrypoint=["python"], arguments=["t.py"])
    assert both.argv == ["python", "t.py"]
    # No ENTRYPOINT: `train` is the program (SageMaker's bring-your-own convention).
    assert command(ImageConfig(cmd=("x",)), "train", {}).argv == ["train"]


def _rootfs(tmp_path: Path, passwd: str, group: str) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(passwd)
    (root / "etc" / "group").write_text(group)
    return root


def test_user_resolved_through_the_images_own_files(tmp_path: Path) -> None:
    root = _rootfs(
        tmp_path,
        "root:x:0:0:root:/root:/bin/sh\nml:x:1500:1600::/home/ml:/bin/sh\n",
        "root:x:0:\nml:x:1600:\nvideo:x:44:ml,other\ndata:x:45:other\n",
    )
    assert resolve_user(root, "").user == User(0, 0)
    resolved = resolve_user(root, "ml")
    assert (resolved.user, resolved.home) == (User(1500, 1600, (44,)), "/home/ml")
    assert resolve_user(root, "1500").user == User(1500, 1600, (44,))
    assert resolve_user(root, "ml:data").user == User(1500, 45, (44,))
    assert resolve_user(root, "4242:4343").user == User(4242, 4343)
    assert resolve_user(root, "4242").user == User(4242, 0)
    with pytest.raises(UserError, match="'nobody-here' is not in its /etc/passwd"):
        resolve_user(root, "nobody-here")
    with pytest.raises(UserError, match="group 'nogroup'"):
        resolve_user(root, "ml:nogroup")


def test_user_files_are_read_inside_the_image_never_the_machines(tmp_path: Path) -> None:
    """An image whose /etc is a link to the machine's /etc (or whose passwd climbs out with
    `..`) is read as the container would see it: inside its own root."""
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "etc").symlink_to("/etc")  # inside the container: a loop, not the machine's /etc
    with pytest.raises(UserError, match="too many symbolic links"):
        resolve_user(root, "daemon")
    (root / "etc").unlink()
    (root / "real").mkdir()
    (root / "real" / "passwd").write_text("svc:x:77:77::/:/bin/sh\n")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").symlink_to("../../../../../real/passwd")
    assert resolve_user(root, "svc").user == User(77, 77)
    assert inside(root, "../../etc/shadow") == root / "etc" / "shadow"
    # The machine's own users are unknown to the image: `root`'s home comes from the image.
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").symlink_to("/etc/shadow")
    with pytest.raises(UserError):
        resolve_user(root, "daemon")


def test_gpu_plan_binds_only_the_assigned_gpus(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    (dev / "nvidia-caps").mkdir(parents=True)
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia-caps/c1"):
        (dev / name).touch()
    libs = tmp_path / "lib"
    libs.mkdir()
    for name in ("libcuda.so.550.54", "libnvidia-ml.so.1", "libc.so.6", "libcudart.so.12"):
        (libs / name).touch()
    (libs / "libcuda.so.1").symlink_to("libcuda.so.550.54")
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nvidia-smi").touch()
    plan = plan_gpus(("0", "2"), dev, (libs,), (tools,))
    assert plan.devices == tuple(
        str(dev / n) for n in ("nvidia0", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia-caps/c1")
    )
    targets = {bind.target: bind.source for bind in plan.binds}
    assert targets[f"{LIBRARY_TARGET}/libcuda.so.1"] == str(libs / "libcuda.so.550.54")
    assert f"{LIBRARY_TARGET}/libnvidia-ml.so.1" in targets
    # The CUDA runtime belongs to the image; the C library is the image's own.
    assert not any("libcudart" in t or "libc.so" in t for t in targets)
    assert targets["/usr/local/nvidia/bin/nvidia-smi"] == str(tools / "nvidia-smi")
    assert all(bind.read_only for bind in plan.binds)
    # Machine GPUs 0 and 2, alone in the container: its CUDA numbers them 0 and 1.
    assert plan.visible == ("0", "1") and "CUDA_VISIBLE_DEVICES" not in plan.env
    assert plan_gpus((), dev, (libs,), (tools,)).devices == ()
    with pytest.raises(RuntimeError, match="GPU 5 has no device node"):
        plan_gpus(("5",), dev, (libs,), (tools,))


def test_insecure_registries_setting() -> None:
    env = {"OPENMAKER_INSECURE_REGISTRIES": "127.0.0.1:5000, registry.local", "HOME": "/x"}
    assert load_settings(env).insecure_registries == ("127.0.0.1:5000", "registry.local")
    with pytest.raises(SettingsError, match="OPENMAKER_INSECURE_REGISTRIES"):
        load_settings({"OPENMAKER_INSECURE_REGISTRIES": "http://host/x"})
    auth = load_settings({"REGISTRY_AUTH_FILE": "/etc/auth.json"}).registry_auth_file
    assert auth == Path("/etc/auth.json")
    assert os.sep == "/"


def test_stop_signal_names_as_docker_takes_them() -> None:
    assert stop_signal("") == signal.SIGTERM  # none given
    assert stop_signal("SIGQUIT") == stop_signal("quit") == stop_signal("3") == signal.SIGQUIT
    assert stop_signal("SIGRTMIN+3") == signal.SIGRTMIN + 3
    for bad in ("NOPE", "0", "999", "SIG_IGN"):
        with pytest.raises(ValueError, match="is not a signal"):
            stop_signal(bad)


def test_without_a_mode_the_images_cmd_stays() -> None:
    """A processing job's image without ContainerEntrypoint: `docker run IMAGE [ARGS]`."""
    config = ImageConfig(entrypoint=("/ep",), cmd=("a", "b"))
    assert command(config, None, {}).argv == ["/ep", "a", "b"]
    assert command(config, None, {}, arguments=["x"]).argv == ["/ep", "x"]
    assert command(config, "train", {}).argv == ["/ep", "train"]
