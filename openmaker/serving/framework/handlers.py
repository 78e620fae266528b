"""The user's handlers: the entry point's module (SAGEMAKER_PROGRAM, `inference.py` by
default, in the code folder), each function it defines used in place of the framework's
default. With `transform_fn(model, data, content_type, accept)`, that alone answers."""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from openmaker.serving.framework import codecs
from openmaker.serving.framework.defaults import Defaults

DEFAULT_PROGRAM = "inference.py"


@dataclass(frozen=True)
class Answer:
    body: bytes
    content_type: str


class Handlers:
    def __init__(self, framework: str, module: ModuleType | None) -> None:
        defaults = Defaults(framework)
        found: dict[str, Any] = vars(module) if module is not None else {}
        self.model_fn: Callable[..., Any] = found.get("model_fn", defaults.model_fn)
        self.input_fn: Callable[..., Any] = found.get("input_fn", defaults.input_fn)
        self.predict_fn: Callable[..., Any] = found.get("predict_fn", defaults.predict_fn)
        self.output_fn: Callable[..., Any] = found.get("output_fn", defaults.output_fn)
        self.transform_fn: Callable[..., Any] | None = found.get("transform_fn")
        self.model: Any = None

    def load(self, model_dir: str) -> None:
        # Newer toolkits pass a context to a model_fn that takes one; there is none here.
        takes_context = len(inspect.signature(self.model_fn).parameters) > 1
        self.model = self.model_fn(model_dir, None) if takes_context else self.model_fn(model_dir)

    def answer(self, body: bytes, content_type: str, accept: str) -> Answer:
        data: str | bytes = body
        if codecs.base_type(content_type) in codecs.TEXT_TYPES:
            data = body.decode()
        if self.transform_fn is not None:
            result = self.transform_fn(self.model, data, content_type, accept)
        else:
            prediction = self.predict_fn(self.input_fn(data, content_type), self.model)
            result = self.output_fn(prediction, accept)
        if isinstance(result, tuple) and len(result) == 2:  # (answer, its content type)
            result, accept = result
        return Answer(_bytes(result), accept)


def load_module(code_dir: Path, program: str) -> ModuleType | None:
    """The entry point's module from `code_dir`, its folder first on sys.path (it may import
    its neighbours); None when there is no such file and SAGEMAKER_PROGRAM named none."""
    path = code_dir / program
    if not path.is_file():
        if os.environ.get("SAGEMAKER_PROGRAM"):
            raise FileNotFoundError(f"the entry point {program} is not in {code_dir}")
        return None
    sys.path.insert(0, str(code_dir))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def _bytes(result: Any) -> bytes:
    if isinstance(result, bytes | bytearray):
        return bytes(result)
    if isinstance(result, str):
        return result.encode()
    raise TypeError(
        f"output_fn (or transform_fn) returned {type(result).__name__}: return bytes or str "
        "(or a tuple of it and its content type)"
    )
