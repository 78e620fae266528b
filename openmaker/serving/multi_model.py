"""Multi-model endpoints (`Mode: MultiModel`): one container serves the models under the
model's `ModelDataUrl` prefix, each loaded on first use.

`InvokeEndpoint`'s `TargetModel` is a key relative to that prefix (a `model.tar.gz`). On an
instance's first request for it, the archive is fetched and extracted into the instance's
`models/<name>/model` (shown read-only at `/opt/ml/models`; members that would land outside it
refused, as for any model archive), then loaded through SageMaker's multi-model container API:
`POST /models` with `{"model_name", "url"}` (409: loaded already). A container that answers 507
(no room) has its least recently used model unloaded (`DELETE /models/<name>`, its files
removed) and is asked again. The request then goes to `POST /models/<name>/invoke`. `<name>` is
opaque, as on SageMaker (derived from the TargetModel, which the container sees in the
`X-Amzn-SageMaker-Target-Model` header). Requests for a model being loaded wait for that one
load. A container that started again has lost its models: a 404 from the invoke reloads it once.

This runs in the server, beside the invocation proxy. The archive goes into the instance's folder
(which its worker made) through the instance's `Fetcher`: on this machine `LocalFetcher`; an
instance on a node of the Ray cluster has its node's serving agent fetch it there
(serving/ray_instances.py `AgentFetcher`).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from openmaker.serving.liveness import InstanceConnection
from openmaker.serving.model_data import ModelDataError, fetch
from openmaker.serving.refused import Refused
from openmaker.settings import StoreSettings

MODELS_DIR = "/opt/ml/models"
FOLDER = "models"  # in the instance's folder
MULTI_MODEL = "MultiModel"
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
TARGET_MODEL_CHARS = 1024
INSUFFICIENT_STORAGE = 507
# Models unloaded for one load at most (a container that answers 507 whatever it unloads).
MAX_UNLOADS = 100


def is_multi_model(container: dict[str, Any]) -> bool:
    return container.get("Mode") == MULTI_MODEL


def environment() -> dict[str, str]:
    """What a multi-model container is told (the serving toolkits read it)."""
    return {"SAGEMAKER_MULTI_MODEL": "true"}


def model_name(target: str) -> str:
    """The container's name for a TargetModel: opaque, and safe as a folder's name."""
    return "m-" + hashlib.sha256(target.encode()).hexdigest()[:24]


NAME = re.compile(r"m-[0-9a-f]{24}")  # what model_name gives


def _first(model: dict[str, Any]) -> dict[str, Any]:
    """The model's container (a multi-model one is its only one)."""
    return dict(model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0])


def url(model: dict[str, Any], target: str) -> str:
    """Where a TargetModel's archive is: the key under the model's prefix."""
    prefix = str(_first(model)["ModelDataUrl"])
    return prefix + target if prefix.endswith("/") else f"{prefix}/{target}"


def target(model: dict[str, Any], endpoint: str, given: str | None) -> str | None:
    """A request's TargetModel (None: the request has none), checked against the endpoint's
    model (Refused says why not)."""
    multi_model = is_multi_model(_first(model))
    if given is None:
        if multi_model:
            raise Refused(
                f"Endpoint {endpoint} is a multi-model endpoint: TargetModel must name the "
                "model to invoke"
            )
        return None
    if not multi_model:
        raise Refused(
            f"Endpoint {endpoint} is not a multi-model endpoint and does not take a "
            "TargetModel header"
        )
    parts = given.split("/")
    if len(given) > TARGET_MODEL_CHARS or given.startswith("/") or ".." in parts or "." in parts:
        raise Refused(
            f"TargetModel {json.dumps(given[:100])} is not a key relative to the endpoint's "
            "model prefix"
        )
    return given


@dataclass
class _Loaded:
    """What one instance's container has loaded, least recently used first."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    used: OrderedDict[str, None] = field(default_factory=OrderedDict)
    loading: dict[str, threading.Lock] = field(default_factory=dict)


class Fetcher(Protocol):
    """Puts a model's files in an instance's models folder, where its container sees them."""

    def fetch(self, name: str, url: str) -> None:
        """The archive at `url` extracted into `models/<name>/model`, unless it is there
        already; ModelDataError says why not."""

    def remove(self, name: str) -> None:
        """`models/<name>` gone (unloaded)."""


def fetch_into(folder: Path, name: str, url: str, store: StoreSettings) -> None:
    """Fetcher.fetch, into the instance's folder `folder` on this machine."""
    models = folder / FOLDER
    final = models / name
    if (final / "model").is_dir():
        return
    partial = models / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "model").mkdir(parents=True)
    (partial / "scratch").mkdir()
    try:
        fetch({"ModelDataUrl": url}, partial / "model", partial / "scratch", store)
        shutil.rmtree(partial / "scratch")
        partial.rename(final)
    except ModelDataError:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def remove_from(folder: Path, name: str) -> None:
    """Fetcher.remove, from the instance's folder `folder` on this machine."""
    if NAME.fullmatch(name):  # never a path given from elsewhere
        shutil.rmtree(folder / FOLDER / name, ignore_errors=True)


@dataclass(frozen=True)
class LocalFetcher:
    """An instance on this machine: its folder is here."""

    folder: Path
    store: StoreSettings

    def fetch(self, name: str, url: str) -> None:
        fetch_into(self.folder, name, url, self.store)

    def remove(self, name: str) -> None:
        remove_from(self.folder, name)


@dataclass(frozen=True)
class Target:
    """A TargetModel on one instance."""

    folder: Path  # the instance's folder (on this machine, or its node's)
    address: str  # its container's host:port
    target: str
    url: str  # the archive's s3:// URI
    fetcher: Fetcher

    @property
    def name(self) -> str:
        return model_name(self.target)


# The ModelError for a container's status and message.
ModelError = Callable[[int, str], Exception]
AnswerT = TypeVar("AnswerT")


class MultiModels:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._instances: dict[Path, _Loaded] = {}

    def invoke(
        self,
        target: Target,
        forward: Callable[[str], AnswerT | None],
        model_error: ModelError,
    ) -> AnswerT:
        """The request, sent by `forward` to a path of the instance's container (None: the
        container answered 404) once the container has the model loaded."""
        self.ensure(target, model_error)
        path = f"/models/{target.name}/invoke"
        answer = forward(path)
        if answer is not None:
            return answer
        # The container no longer has it (it started again): load it again, once.
        self.forget(target)
        self.ensure(target, model_error)
        answer = forward(path)
        if answer is None:
            raise model_error(404, f"the container does not have model {target.target} loaded")
        return answer

    def ensure(self, target: Target, model_error: ModelError) -> None:
        loaded = self._of(target.folder)
        name = target.name
        with loaded.lock:
            if name in loaded.used:
                loaded.used.move_to_end(name)
                return
            gate = loaded.loading.setdefault(name, threading.Lock())
        with gate:  # one load for concurrent first requests; the others wait for it
            with loaded.lock:
                if name in loaded.used:
                    loaded.used.move_to_end(name)
                    return
            self._fetch(target)
            self._load(target, loaded, model_error)
            with loaded.lock:
                loaded.used[name] = None
                loaded.loading.pop(name, None)

    def forget(self, target: Target) -> None:
        loaded = self._of(target.folder)
        with loaded.lock:
            loaded.used.pop(target.name, None)

    def _of(self, folder: Path) -> _Loaded:
        with self._lock:
            loaded = self._instances.get(folder)
            if loaded is None:
                # A new instance: forget those gone (retired by an update, or deleted).
                for gone in [f for f in self._instances if not f.is_dir()]:
                    del self._instances[gone]
                loaded = self._instances[folder] = _Loaded()
            return loaded

    def _fetch(self, target: Target) -> None:
        try:
            target.fetcher.fetch(target.name, target.url)
        except ModelDataError as exc:
            raise self._download_failed(target, exc) from None

    def _download_failed(self, target: Target, exc: ModelDataError) -> Refused:
        bucket, _, key = target.url.removeprefix("s3://").partition("/")
        return Refused(
            f"Failed to download model data(bucket: {bucket}, key: {key}). Please ensure that "
            "there is an object located at the URL and that the role passed to CreateModel has "
            f"permissions to download the model. ({exc})"
        )

    def _load(self, target: Target, loaded: _Loaded, model_error: ModelError) -> None:
        """POST /models; on 507, unload the least recently used model and ask again."""
        body = json.dumps(
            {"model_name": target.name, "url": f"{MODELS_DIR}/{target.name}/model"}
        ).encode()
        unloaded: set[str] = set()
        while True:
            status, text = self._call(target, "POST", "/models", body)
            if 200 <= status < 300 or status == 409:  # 409: loaded already
                return
            victim = None
            if status == INSUFFICIENT_STORAGE and len(unloaded) < MAX_UNLOADS:
                victim = self._least_recent(loaded, target.name)
                victim = victim or self._any_loaded(target, unloaded)
            if victim is None:
                raise model_error(status, text)
            unloaded.add(victim)
            self._unload(target, loaded, victim)

    def _least_recent(self, loaded: _Loaded, keep: str) -> str | None:
        with loaded.lock:
            return next((name for name in loaded.used if name != keep), None)

    def _any_loaded(self, target: Target, unloaded: set[str]) -> str | None:
        """A model the container has that this server did not load (it loaded them before
        the server started again), as `GET /models` lists them."""
        status, text = self._call(target, "GET", "/models", None)
        try:
            listed = json.loads(text)["models"] if status == 200 else []
            names = [str(m["modelName"]) for m in listed]
        except (ValueError, KeyError, TypeError):
            return None
        # Only names this server gives: a container's list is not trusted as a path.
        return next(
            (n for n in names if n != target.name and n not in unloaded and NAME.fullmatch(n)),
            None,
        )

    def _unload(self, target: Target, loaded: _Loaded, name: str) -> None:
        with loaded.lock:
            loaded.used.pop(name, None)
        self._call(target, "DELETE", f"/models/{name}", None)
        target.fetcher.remove(name)

    def _call(self, target: Target, method: str, path: str, body: bytes | None) -> tuple[int, str]:
        host, _, port = target.address.rpartition(":")
        connection = InstanceConnection(host, int(port), timeout=self.timeout)
        headers = {TARGET_MODEL: target.target, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read(64 * 1024).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            return 500, f"the model container did not answer {method} {path}: {exc}"
        finally:
            connection.close()
