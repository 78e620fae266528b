"""The errors the SageMaker API answers with, as exceptions carrying the AWS error code.

An operation answers the errors its model declares (its error shapes) and the errors every AWS
service may answer (`COMMON_ERRORS`); tests/test_resources.py holds openmaker to that.
"""

from __future__ import annotations

# What any AWS JSON service may answer, whatever its model declares: a request it cannot
# parse, sign or serve now. (SageMaker answers ValidationException without declaring it.)
COMMON_ERRORS = frozenset(
    {
        "AccessDeniedException",
        "IncompleteSignatureException",
        "InternalFailure",
        "InvalidSignatureException",
        "MissingAuthenticationTokenException",
        "RequestEntityTooLargeException",
        "SerializationException",
        "ServiceUnavailable",
        "ThrottlingException",
        "UnknownOperationException",
        "UnrecognizedClientException",
        "ValidationException",
    }
)


# Where openmaker answers an error its model does not declare for the operation, on purpose: the
# tag operations declare none, and a missing resource is ResourceNotFound here (SageMaker itself
# answers ValidationException; tests/test_api.py::test_tags holds openmaker's answer).
DEPARTURES = {
    ("sagemaker", "AddTags"): frozenset({"ResourceNotFound"}),
    ("sagemaker", "ListTags"): frozenset({"ResourceNotFound"}),
    ("sagemaker", "DeleteTags"): frozenset({"ResourceNotFound"}),
}


def declared_errors(operation: str, service: str = "sagemaker") -> frozenset[str]:
    """The error codes (`__type`, the shape names) `operation` may answer: its model's error
    shapes, and the common ones."""
    # Imported here: raising these errors needs no API model (a worker raises some).
    from openmaker.shapes.model import operation_model

    shapes = operation_model(operation, service).error_shapes
    return COMMON_ERRORS | {shape.name for shape in shapes}


def answered_errors(operation: str, service: str = "sagemaker") -> frozenset[str]:
    """What openmaker may answer for `operation`: what the model declares, and its departures."""
    return declared_errors(operation, service) | DEPARTURES.get((service, operation), frozenset())


class ServiceError(Exception):
    """An error a SageMaker client receives: `code` is the AWS error code."""

    code = "InternalFailure"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ValidationException(ServiceError):
    code = "ValidationException"
    http_status = 400


class ResourceInUse(ServiceError):
    code = "ResourceInUse"
    http_status = 400


class ResourceNotFound(ServiceError):
    code = "ResourceNotFound"
    http_status = 400


class ResourceLimitExceeded(ServiceError):
    code = "ResourceLimitExceeded"
    http_status = 400


class ThrottlingException(ServiceError):
    """The service is busy (here: the database stayed locked); clients retry these."""

    code = "ThrottlingException"
    http_status = 400


class ServiceUnavailable(ServiceError):
    """The machine cannot take the request now (its disk is full); clients retry these."""

    code = "ServiceUnavailable"
    http_status = 503


class UnknownOperation(ServiceError):
    code = "UnknownOperationException"
    http_status = 400


class SerializationError(ServiceError):
    """The request body is not the JSON document the protocol expects."""

    code = "SerializationException"
    http_status = 400


# CloudWatch Logs names its errors differently from SageMaker.
class LogsResourceNotFound(ServiceError):
    code = "ResourceNotFoundException"
    http_status = 400


class InvalidParameter(ServiceError):
    code = "InvalidParameterException"
    http_status = 400
