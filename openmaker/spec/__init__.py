"""The SageMaker API's shapes: requests checked against the botocore model, ARNs, names."""

from openmaker.spec.arn import resource_arn, training_job_arn
from openmaker.spec.errors import (
    ResourceInUse,
    ResourceLimitExceeded,
    ResourceNotFound,
    ServiceError,
    ValidationException,
)
from openmaker.spec.locations import LocalPaths
from openmaker.spec.model import operation_model, service_model, shape
from openmaker.spec.names import unique_name
from openmaker.spec.training import check_create_training_job, default_stopping_condition
from openmaker.spec.validate import (
    compile_pattern,
    pattern_matches,
    shape_problems,
    validate_input,
    validate_output,
)

__all__ = [
    "LocalPaths",
    "ResourceInUse",
    "ResourceLimitExceeded",
    "ResourceNotFound",
    "ServiceError",
    "ValidationException",
    "check_create_training_job",
    "compile_pattern",
    "default_stopping_condition",
    "operation_model",
    "pattern_matches",
    "resource_arn",
    "service_model",
    "shape",
    "shape_problems",
    "training_job_arn",
    "unique_name",
    "validate_input",
    "validate_output",
]
