"""One serving instance: its model data, its `serve` container in a network namespace of its
own on the endpoint's bridge, listening on 8080 as on SageMaker, and its health.

Its folder (`$OPENMAKER_HOME/endpoints/<endpoint>/<instance>`) holds the model data, shown
read-only at /opt/ml/model, and the container's copy-on-write state; it goes with the instance.
The container is held to the instance's share of the machine (serving/limits.py).
"""

from __future__ import annotations

import http.client
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openmaker.runtime import Bind, Container, ContainerSpec
from openmaker.runtime.images import Cancelled, ImageContainer, never
from openmaker.runtime.layers import hidden_paths
from openmaker.runtime.logs import OnLines
from openmaker.runtime.network import HostNamespace, JobNetwork, enter_host
from openmaker.runtime.spec import Limits
from openmaker.serving import limits
from openmaker.serving.image import PROGRAM_MOUNT, SERVE, ServingImage, pull
from openmaker.serving.model_data import fetch
from openmaker.serving.placement import Share
from openmaker.settings import Settings

PORT = 8080
MODEL_DIR = "/opt/ml/model"
# SageMaker's: each ping gets 2 s; a container gets 8 minutes to pass its first by default.
PING_SECONDS = 2.0
DEFAULT_STARTUP_SECONDS = 480
PATH = "/opt/program:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class InstancePlan:
    variant: str
    id: str  # "i-…": its host name, and the second half of its log stream's name
    index: int  # among the endpoint's instances
    container: dict[str, Any]  # the model's container definition
    image: ServingImage
    startup_seconds: int
    instance_type: str = "ml.local"

    @property
    def stream(self) -> str:
        return f"{self.variant}/{self.id}"


class Instance:
    def __init__(self, settings: Settings, endpoint: str, plan: InstancePlan, owner: str) -> None:
        """An instance of the endpoint (or transform job) `endpoint`, whose local key
        (ResourceKind.local_key) is `owner`: its cgroups go under it."""
        self.settings, self.endpoint, self.plan, self.owner = settings, endpoint, plan, owner
        self.folder = settings.home / "endpoints" / endpoint / plan.id
        self.container: Container | None = None
        self.namespace: HostNamespace | None = None
        self.address = ""
        self.image: ImageContainer | None = None  # a pulled image's, once prepared
        self.share: Share | None = None  # None: not limited (the whole machine)
        # Whether it answered /ping since its container last started.
        self.ready = False

    def prepare(self, cancelled: Cancelled = never) -> None:
        """Fetch the model data (ModelDataError says why it cannot be had) and the image (its
        pull interrupted once `cancelled()`)."""
        model = self.folder / "model"
        for folder in (model, self.folder / "scratch", self.folder / "state"):
            folder.mkdir(parents=True, exist_ok=True)
        fetch(self.plan.container, model, self.folder / "scratch", self.settings.store)
        self.image = pull(self.plan.image, self.settings, cancelled)  # ImageError

    def start(self, network: JobNetwork, on_lines: OnLines) -> None:
        plan = self.plan
        self.namespace = enter_host(network, plan.id, plan.index)
        self.address = f"{network.addresses[plan.id]}:{PORT}"
        state = self.folder / "state"
        shutil.rmtree(state, ignore_errors=True)  # a restart begins from the image again
        state.mkdir()
        env = {"PATH": PATH, "AWS_REGION": self.settings.region, "LANG": "C.UTF-8"}
        env.update(plan.container.get("Environment") or {})
        if self.image is not None:
            spec = self._image_spec(self.image, state)
        else:
            spec = self._folder_spec(state, env)
        self.ready = False
        self.container = Container(spec)
        self.container.start(on_lines)

    def _image_spec(self, image: ImageContainer, state: Path) -> ContainerSpec:
        """A pulled image: its root, ENV (the model's Environment on top), WORKDIR and USER."""
        assert self.namespace is not None
        env = {**image.env, "AWS_REGION": self.settings.region}
        env.update(self.plan.container.get("Environment") or {})
        return ContainerSpec(
            argv=image.argv,
            env=env,
            state_dir=state,
            layers=(image.rootfs,),
            binds=(Bind(str(self.folder / "model"), MODEL_DIR, read_only=True, unnamed=True),),
            workdir=image.workdir,
            user=image.user,
            stop_signal=image.stop_signal,
            hostname=self.plan.id,
            netns_fd=self.namespace.fd,
            detach_mounts_under=self.settings.home,
            limits=self._limits(),
        )

    def _folder_spec(self, state: Path, env: dict[str, str]) -> ContainerSpec:
        assert self.namespace is not None and self.plan.image.program_dir is not None
        return ContainerSpec(
            argv=[SERVE],
            env=env,
            state_dir=state,
            binds=(
                Bind(str(self.folder / "model"), MODEL_DIR, read_only=True, unnamed=True),
                Bind(str(self.plan.image.program_dir), PROGRAM_MOUNT),
            ),
            workdir=PROGRAM_MOUNT,
            hostname=self.plan.id,
            netns_fd=self.namespace.fd,
            hidden=tuple(hidden_paths(self.settings.sandbox_hide)),
            removed=self.settings.private_paths,
            detach_mounts_under=self.settings.home,
            limits=self._limits(),
        )

    def _limits(self) -> Limits:
        if self.share is None:
            return Limits(pids=self.settings.pids_limit)
        return limits.instance_limits(self.settings, self.owner, self.plan.id, self.share)

    def oom_killed(self) -> bool:
        return limits.oom_killed(self.settings.home, self.owner, self.plan.id)

    def healthy(self) -> bool:
        """Whether `GET /ping` answers 200 within PING_SECONDS."""
        host, _, port = self.address.rpartition(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=PING_SECONDS)
        try:
            connection.request("GET", "/ping")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def wait_healthy(self, stop: threading.Event) -> str | None:
        """None once it answers /ping; else why not, for a FailureReason."""
        assert self.container is not None
        deadline = time.monotonic() + self.plan.startup_seconds
        while not stop.is_set():
            code = self.container.poll()
            if code is not None:
                return f"its container exited with status {code} before it answered /ping"
            if self.healthy():
                self.ready = True
                return None
            if time.monotonic() >= deadline:
                return (
                    f"its container did not answer GET /ping with 200 within "
                    f"{self.plan.startup_seconds} seconds"
                )
            stop.wait(0.2)
        return "the endpoint was deleted while it started"

    def stop(self, grace: float) -> None:
        self.ready = False
        if self.container is not None:
            self.container.stop(grace)
            self.container = None
            limits.release(self.settings.home, self.owner, self.plan.id)
        if self.namespace is not None:
            self.namespace.close()
            self.namespace = None

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
