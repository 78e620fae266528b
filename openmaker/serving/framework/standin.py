"""The endpoint worker's side of a framework image's stand-in: the entry point's code when
the model names it in S3 (SAGEMAKER_SUBMIT_DIRECTORY, as the SDK sets it without repacking),
and the instance's container: this machine's root filesystem, copy-on-write, running
server.py with openmaker's Python."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import openmaker
from openmaker.runtime import Bind, ContainerSpec
from openmaker.runtime.layers import hidden_paths, unseen_by_root
from openmaker.runtime.spec import Limits
from openmaker.serving.framework.paths import FETCHED_CODE_DIR, MODEL_DIR
from openmaker.serving.model_data import ModelDataError, fetch
from openmaker.settings import Settings, StoreSettings

# The frameworks whose serving images are stood in for (TensorFlow's and MXNet's serve
# through model servers of their own, not these handlers).
STOOD_IN = ("scikit-learn", "PyTorch", "XGBoost", "Hugging Face")


def fetch_code(container: dict[str, Any], folder: Path, store: StoreSettings) -> None:
    """The submit directory's `sourcedir.tar.gz` extracted into `folder`/code when the model's
    environment names one in S3; ModelDataError says why it cannot be had."""
    submit = (container.get("Environment") or {}).get("SAGEMAKER_SUBMIT_DIRECTORY", "")
    if not submit.startswith("s3://"):
        return
    code = folder / "code"
    code.mkdir(exist_ok=True)
    try:
        fetch({"ModelDataUrl": submit}, code, folder / "scratch", store)
    except ModelDataError as exc:
        raise ModelDataError(f"SAGEMAKER_SUBMIT_DIRECTORY {submit}: {exc}") from None


def container_spec(
    settings: Settings,
    framework: str,
    folder: Path,
    binds: list[Bind],
    env: dict[str, str],
    hostname: str,
    netns_fd: int,
    limits: Limits,
) -> ContainerSpec:
    """The stand-in's container for the instance (or pipeline container) whose folder is
    `folder` (model/, code/, state/), with `binds` (its model's among them)."""
    hidden = hidden_paths(settings.sandbox_hide)
    covered = [Path("/tmp"), *settings.private_paths, *hidden]
    package = str(Path(openmaker.__file__).parent)
    # openmaker's Python and package may live where the root layer does not show them.
    layers = ("/", *unseen_by_root([sys.prefix, sys.base_prefix, package], covered))
    if (folder / "code").is_dir():
        binds = [*binds, Bind(str(folder / "code"), FETCHED_CODE_DIR, unnamed=True)]
    python_bin = str(Path(sys.executable).parent)
    env = {**env, "PATH": f"{python_bin}:{env.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    return ContainerSpec(
        # -P: the working folder (the model's) is not put on sys.path before openmaker's.
        argv=[sys.executable, "-P", "-m", "openmaker.serving.framework.server", framework],
        env=env,
        state_dir=folder / "state",
        layers=layers,
        binds=tuple(binds),
        workdir=MODEL_DIR,
        hostname=hostname,
        netns_fd=netns_fd,
        hidden=tuple(hidden),
        removed=settings.private_paths,
        detach_mounts_under=settings.home,
        limits=limits,
    )
