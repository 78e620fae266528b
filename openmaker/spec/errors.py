"""The errors the SageMaker API answers with, as exceptions carrying the AWS error code."""

from __future__ import annotations


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
