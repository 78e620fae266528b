"""Each framework's default handlers, as its SageMaker inference toolkit defines them: what
runs where the user's module does not define a function.

- scikit-learn: no default model_fn (the module must give one); input decoded to an array
  (float32 from JSON and CSV); `model.predict`; output encoded in the Accept type.
- PyTorch: a TorchScript `model.pt` loaded from the model folder; input as a tensor;
  `model(input)` in eval mode without gradients; output encoded.
- XGBoost: the booster in `xgboost-model` (a pickle or XGBoost's own format); input as a
  DMatrix; `booster.predict`; output encoded.
- Hugging Face: a `transformers` pipeline of the task `HF_TASK` over the model folder; JSON
  `{"inputs": ..., "parameters": {...}}` in, the pipeline's answer as JSON out.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
from typing import Any

from openmaker.serving.framework import codecs

SKLEARN, PYTORCH, XGBOOST, HUGGING_FACE = "scikit-learn", "PyTorch", "XGBoost", "Hugging Face"


class Defaults:
    """The handlers a framework gives when the user's module does not."""

    def __init__(self, framework: str) -> None:
        self.framework = framework

    def model_fn(self, model_dir: str) -> Any:
        if self.framework == PYTORCH:
            return _torchscript(model_dir)
        if self.framework == XGBOOST:
            return _booster(model_dir)
        if self.framework == HUGGING_FACE:
            return _pipeline(model_dir)
        raise NotImplementedError(
            f"The {self.framework} serving image has no default model_fn: define "
            "model_fn(model_dir) in the entry point (inference.py)"
        )

    def input_fn(self, data: str | bytes, content_type: str) -> Any:
        if self.framework == HUGGING_FACE:
            if codecs.base_type(content_type) != codecs.JSON:
                raise codecs.UnsupportedFormat(
                    f"Content type {content_type} is not supported by the default input_fn "
                    "of Hugging Face models (application/json is)"
                )
            return json.loads(data)
        array = codecs.decode(data, content_type)
        text = codecs.base_type(content_type) in codecs.TEXT_TYPES
        if self.framework == PYTORCH:
            torch = _module("torch")
            return torch.FloatTensor(array) if text else torch.from_numpy(array)
        if self.framework == XGBOOST:
            return _module("xgboost").DMatrix(array.reshape(1, -1) if array.ndim == 1 else array)
        return array.astype("float32") if text else array

    def predict_fn(self, data: Any, model: Any) -> Any:
        if self.framework == PYTORCH:
            torch = _module("torch")
            model.eval()
            with torch.no_grad():
                return model(data)
        if self.framework == HUGGING_FACE:
            inputs = data.pop("inputs", data) if isinstance(data, dict) else data
            parameters = data.pop("parameters", None) if isinstance(data, dict) else None
            return model(inputs, **(parameters or {}))
        return model.predict(data)

    def output_fn(self, prediction: Any, accept: str) -> bytes:
        if hasattr(prediction, "detach"):  # a torch tensor
            prediction = prediction.detach().cpu().numpy()
        return codecs.encode(prediction, accept)


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise RuntimeError(
            f"the default handlers need the Python package {name!r}, which is not installed "
            "here: install it on this machine, or name it in code/requirements.txt"
        ) from None


def _torchscript(model_dir: str) -> Any:
    path = os.path.join(model_dir, "model.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(
            "The default model_fn of PyTorch models loads the TorchScript model.pt, which the "
            "model data does not hold: save one, or define model_fn in the entry point"
        )
    return _module("torch").jit.load(path, map_location="cpu")


def _booster(model_dir: str) -> Any:
    path = os.path.join(model_dir, "xgboost-model")
    xgboost = _module("xgboost")
    try:
        with open(path, "rb") as file:
            return pickle.load(file)
    except (pickle.UnpicklingError, EOFError, ValueError):
        booster = xgboost.Booster()
        booster.load_model(path)
        return booster


def _pipeline(model_dir: str) -> Any:
    task = os.environ.get("HF_TASK")
    if not task:
        raise ValueError("The default model_fn of Hugging Face models needs the HF_TASK variable")
    return _module("transformers").pipeline(task=task, model=model_dir)
