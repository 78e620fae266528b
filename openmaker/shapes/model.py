"""The botocore service models openmaker checks requests and responses against.

Every AWS limit openmaker enforces is read from these models, so that a botocore upgrade
brings the new limits with it.
"""

from __future__ import annotations

import functools

from botocore.loaders import Loader
from botocore.model import OperationModel, ServiceModel, Shape


@functools.cache
def _loader() -> Loader:
    return Loader()


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
