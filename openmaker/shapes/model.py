"""The botocore service models openmaker checks requests and responses against.

Every AWS limit openmaker enforces is read from these models, so that a botocore upgrade
brings the new limits with it.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from typing import Any

from botocore.loaders import JSONFileLoader, Loader
from botocore.model import OperationModel, ServiceModel, Shape


class _PlainJSONFiles(JSONFileLoader):
    """botocore's model files read into plain dicts: botocore's own loader builds an
    OrderedDict for every object, which takes about twice as long for SageMaker's 4 MB model
    (a dict keeps its order too)."""

    def load_file(self, file_path: str) -> Any:
        for suffix, opener in ((".json", open), (".json.gz", gzip.open)):
            try:
                with opener(file_path + suffix, "rb") as file:
                    return json.loads(file.read().decode("utf-8"))
            except FileNotFoundError:
                continue
        return None


@functools.cache
def _loader() -> Loader:
    return plain_loader()


def plain_loader(data_path: str | None = None) -> Loader:
    """A new loader of botocore's model files into plain dicts, also searching `data_path`
    (folders separated as in PATH: botocore's `data_path`, AWS_DATA_PATH): for a botocore
    session of its own, to which boto3 adds its own folder."""
    folders = [os.path.expanduser(f) for f in (data_path or "").split(os.pathsep) if f]
    return Loader(extra_search_paths=folders, file_loader=_PlainJSONFiles())


def service_model(name: str = "sagemaker") -> ServiceModel:
    """The API model of service `name` ("sagemaker", "sagemaker-runtime", "logs", ...)."""
    return _service_model(name)


def operation_model(name: str, service: str = "sagemaker") -> OperationModel:
    """The model of one operation, e.g. `operation_model("CreateTrainingJob")`."""
    return _operation_model(name, service)


# The caches sit behind the public functions so that `f()`, `f("sagemaker")` and
# `f(name="sagemaker")` share one entry (functools.cache keys on how arguments are passed).
@functools.cache
def _service_model(name: str) -> ServiceModel:
    return ServiceModel(_loader().load_service_model(name, "service-2"), service_name=name)


@functools.cache
def _operation_model(name: str, service: str) -> OperationModel:
    return _service_model(service).operation_model(name)


def shape(name: str, service: str = "sagemaker") -> Shape:
    """A named shape of the model, e.g. `shape("TrainingJobName")`."""
    return service_model(service).shape_for(name)
