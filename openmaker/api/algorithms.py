"""The SageMaker operations of algorithms (and, below, of model packages)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from openmaker.algorithms.service import Algorithms

if TYPE_CHECKING:
    from openmaker.api.operations import Handlers


class AlgorithmHandlers:
    def __init__(self, algorithms: Algorithms) -> None:
        self.algorithms = algorithms

    def register(self, handlers: Handlers) -> None:
        for operation, handler in {
            "CreateAlgorithm": self.algorithms.create,
            "DescribeAlgorithm": lambda p: self.algorithms.describe(p["AlgorithmName"]),
            "ListAlgorithms": self.algorithms.list,
            "DeleteAlgorithm": self.delete,
        }.items():
            handlers.register("sagemaker", operation, handler)

    def delete(self, params: dict[str, Any]) -> dict[str, Any]:
        self.algorithms.delete(params["AlgorithmName"])
        return {}
