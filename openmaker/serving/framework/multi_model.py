"""The stand-in's multi-model API (with SAGEMAKER_MULTI_MODEL=true), as the multi-model server
of SageMaker's framework images answers it:

- `POST /models` `{"model_name", "url"}`: the model in folder `url` loaded with its own
  handlers (the entry point in `<url>/code/`, SAGEMAKER_PROGRAM or `inference.py`; the
  framework's defaults without one); 409 when a model of that name is loaded already, 404 when
  the folder does not exist, 500 with the reason when loading fails.
- `GET /models`: `{"models": [{"modelName", "modelUrl"}, ...]}`; `GET /models/<name>`: one.
- `DELETE /models/<name>`: unloaded (404: not loaded).
- `POST /models/<name>/invoke`: the invocation, answered by that model's handlers (404: not
  loaded).
A model's requirements.txt is not installed (the toolkits install a single model's only).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from openmaker.serving.framework.handlers import Handlers

# The environment variable that makes the container a multi-model one (read by server.py).
ENABLED = "SAGEMAKER_MULTI_MODEL"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"


@dataclass(frozen=True)
class Loaded:
    url: str
    handlers: Handlers


def _message(status: int, text: str) -> Reply:
    return Reply(status, json.dumps({"code": status, "message": text}).encode())


class Registry:
    """The models loaded, by name; one load or unload at a time. `program`: each model's
    entry point's file name in its `code/`."""

    def __init__(self, framework: str, program: str) -> None:
        self.framework, self.program = framework, program
        self.models: dict[str, Loaded] = {}
        self.lock = threading.Lock()

    def load(self, body: bytes) -> Reply:
        try:
            asked = json.loads(body)
            name, url = str(asked["model_name"]), str(asked["url"])
        except (ValueError, KeyError, TypeError):
            return _message(400, 'give {"model_name": ..., "url": ...} as JSON')
        if not Path(url).is_dir():
            return _message(404, f"the model folder {url} does not exist")
        with self.lock:
            if name in self.models:
                return _message(409, f'Model "{name}" is already loaded')
            try:
                module = _module(name, Path(url) / "code" / self.program)
                handlers = Handlers(self.framework, module)
                handlers.load(url)
            except Exception as exc:
                print(f"loading model {name} failed: {exc!r}", file=sys.stderr, flush=True)
                return _message(500, f"{type(exc).__name__}: {exc}")
            self.models[name] = Loaded(url, handlers)
        return _message(200, f'Model "{name}" loaded')

    def listing(self, name: str | None = None) -> Reply:
        with self.lock:
            found = [
                {"modelName": n, "modelUrl": m.url}
                for n, m in self.models.items()
                if name is None or n == name
            ]
        if name is not None and not found:
            return _message(404, f'Model "{name}" is not loaded')
        return Reply(200, json.dumps({"models": found} if name is None else found).encode())

    def unload(self, name: str) -> Reply:
        with self.lock:
            if self.models.pop(name, None) is None:
                return _message(404, f'Model "{name}" is not loaded')
        return _message(200, f'Model "{name}" unloaded')

    def handlers(self, name: str) -> Handlers | None:
        with self.lock:
            loaded = self.models.get(name)
        return None if loaded is None else loaded.handlers


def _module(name: str, path: Path) -> ModuleType | None:
    """A model's entry point, as a module of its own (models may share its file name)."""
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"model_{name}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
