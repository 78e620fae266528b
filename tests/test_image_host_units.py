"""A training host's side of pulled images, without a registry: which references run how, the
GPUs a pulled image is shown, and /opt/ml's writable folders given to a non-root USER without
following a link the tree holds."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from openmaker.runtime.images import ImageContainer
from openmaker.runtime.limits import confine
from openmaker.runtime.spec import Limits, User
from openmaker.settings import load_settings
from openmaker.training.host.container import LaunchError, image_gpus
from openmaker.training.host.images import SCRIPT_MODE_IMAGE, ImageError, resolve_image
from openmaker.training.host.jobtree import HostTree, give_writable
from openmaker.training.host.layout import create_tree
from openmaker.training.host.plan import (
    CheckpointPlan,
    CommandPlan,
    LimitsPlan,
    OutputPlan,
    TrainingPlan,
)
from openmaker.training.host.spec import HostResources, HostSettings, HostSpec

ALICE = User(1234, 2345)


def _spec(tmp_path: Path, gpus: tuple[str, ...] = (), checkpoint: bool = False) -> HostSpec:
    plan = TrainingPlan(
        CommandPlan("registry.example/algo:1"), OutputPlan("s3://b/out/"),
        LimitsPlan("ml.g5.xlarge"),
        checkpoint=CheckpointPlan("s3://b/ckpt/") if checkpoint else None,
    )  # fmt: skip
    return HostSpec(
        job_name="j", job_arn="arn", plan=plan, host_name="algo-1", hosts=["algo-1"],
        region="us-east-1", settings=HostSettings.of(load_settings()),
        work_dir=tmp_path / "host", resources=HostResources((0,), None, gpus),
    )  # fmt: skip


def test_which_references_are_pulled(tmp_path: Path) -> None:
    pulled = resolve_image("127.0.0.1:5000/team/algo:1")
    assert pulled.pulled is not None and pulled.pulled.registry == "127.0.0.1:5000"
    assert pulled.path_entries == []  # the image's own PATH
    assert resolve_image("docker-archive:/data/algo.tar").pulled is not None
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text("{}")
    assert str(resolve_image(str(layout)).pulled) == f"oci:{layout}"
    # A bring-your-own folder and script mode stay what they were.
    folder = tmp_path / "byo"
    folder.mkdir()
    (folder / "train").write_text("#!/bin/sh\n")
    (folder / "train").chmod(0o755)
    assert resolve_image(str(folder)).program_dir == folder
    assert resolve_image(SCRIPT_MODE_IMAGE).pulled is None
    with pytest.raises(ImageError, match="is not a repository name"):
        resolve_image("registry.example/Algo:1")


def test_gpus_of_a_pulled_image(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl"):
        (dev / name).touch()
    image = resolve_image("registry.example/algo:1")
    run = ImageContainer(str(tmp_path / "rootfs"), ["train"], {}, "/", ALICE)
    ready = dataclasses.replace(image, container=run)
    plan = image_gpus(_spec(tmp_path, ("1",)), ready, dev)
    assert plan is not None
    assert plan.devices == (str(dev / "nvidia1"), str(dev / "nvidiactl"))
    assert plan.visible == ("0",)  # GPU 1 of the machine is the container's device 0
    # The machine's driver (none here), read-only where CUDA images look for it.
    assert all(b.read_only and b.target.startswith("/usr/local/nvidia/") for b in plan.binds)
    assert image_gpus(_spec(tmp_path), ready, dev) is None  # no GPU assigned
    assert image_gpus(_spec(tmp_path, ("1",)), image, dev) is None  # not pulled: the machine's
    with pytest.raises(LaunchError, match="GPU 3 has no device node"):
        image_gpus(_spec(tmp_path, ("3",)), ready, dev)


def test_writable_folders_go_to_the_images_user_never_through_a_link(tmp_path: Path) -> None:
    spec = _spec(tmp_path, checkpoint=True)
    create_tree(spec)
    ml = spec.ml_dir
    (ml / "checkpoints").mkdir()
    (ml / "input/data/train").mkdir(parents=True)
    (ml / "input/data/train/x.csv").write_text("1\n")
    secret_folder = tmp_path / "secret"
    secret_folder.mkdir()
    secret = secret_folder / "file"
    secret.write_text("s")
    (ml / "model/to-file").symlink_to(secret)
    (ml / "model/to-folder").symlink_to(secret_folder)
    with HostTree(spec) as tree:
        give_writable(tree, ALICE)
    for path in ("model", "output", "output/data", "input/data/train/x.csv", "checkpoints"):
        status = (ml / path).stat()
        assert (status.st_uid, status.st_gid) == (1234, 2345), path
    for untouched in (ml, ml / "input/config", secret, secret_folder):
        assert untouched.stat().st_uid == os.getuid(), untouched
    assert os.lstat(ml / "model/to-file").st_uid == os.getuid()  # the link itself too


def test_an_image_container_numbers_its_gpus_from_zero() -> None:
    """As under NVIDIA's toolkit: the container's CUDA sees only its own device nodes, so the
    machine's GPUs 1 and 3 are its 0 and 1; a container on the machine's root (which sees
    every node) keeps the machine's numbers."""
    image = confine(Limits(gpus=("1", "3"), visible_gpus=("0", "1")))
    assert image.env == {"CUDA_VISIBLE_DEVICES": "0,1", "NVIDIA_VISIBLE_DEVICES": "0,1"}
    assert "GPUs 1,3" in image.note  # the note names the machine's
    machine = confine(Limits(gpus=("1", "3")))
    assert machine.env == {"CUDA_VISIBLE_DEVICES": "1,3", "NVIDIA_VISIBLE_DEVICES": "1,3"}
    assert confine(Limits(gpus=())).env == {"CUDA_VISIBLE_DEVICES": ""}
