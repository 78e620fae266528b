"""The SageMaker operations of algorithms (and, below, of model packages)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from openmaker.algorithms.packages import ModelPackages
from openmaker.algorithms.service import Algorithms
from openmaker.algorithms.validation import Validation

if TYPE_CHECKING:
    from openmaker.api.operations import Handlers


class AlgorithmHandlers:
    def __init__(self, algorithms: Algorithms, validation: Validation) -> None:
        self.algorithms, self.validation = algorithms, validation

    def register(self, handlers: Handlers) -> None:
        for operation, handler in {
            "CreateAlgorithm": self.algorithms.create,
            "DescribeAlgorithm": self.describe,
            "ListAlgorithms": self.algorithms.list,
            "DeleteAlgorithm": self.delete,
        }.items():
            handlers.register("sagemaker", operation, handler)

    def describe(self, params: dict[str, Any]) -> dict[str, Any]:
        # Its validation moves on when asked about too, not only on the server's sweep.
        self.validation.advance(params["AlgorithmName"])
        return self.algorithms.describe(params["AlgorithmName"])

    def delete(self, params: dict[str, Any]) -> dict[str, Any]:
        self.algorithms.delete(params["AlgorithmName"])
        return {}


class ModelPackageHandlers:
    def __init__(self, packages: ModelPackages, validation: Validation) -> None:
        self.packages, self.validation = packages, validation

    def register(self, handlers: Handlers) -> None:
        packages = self.packages
        for operation, handler in {
            "CreateModelPackage": packages.create,
            "DescribeModelPackage": self.describe,
            "ListModelPackages": packages.list,
            "DeleteModelPackage": self.delete,
            "UpdateModelPackage": packages.update,
            "CreateModelPackageGroup": packages.create_group,
            "DescribeModelPackageGroup": lambda p: packages.describe_group(
                p["ModelPackageGroupName"]
            ),
            "ListModelPackageGroups": packages.list_groups,
            "DeleteModelPackageGroup": self.delete_group,
        }.items():
            handlers.register("sagemaker", operation, handler)

    def describe(self, params: dict[str, Any]) -> dict[str, Any]:
        self.validation.advance_package(params["ModelPackageName"])
        return self.packages.describe(params["ModelPackageName"])

    def delete(self, params: dict[str, Any]) -> dict[str, Any]:
        self.packages.delete(params["ModelPackageName"])
        return {}

    def delete_group(self, params: dict[str, Any]) -> dict[str, Any]:
        self.packages.delete_group(params["ModelPackageGroupName"])
        return {}
