"""The SageMaker operations of models, endpoint configurations and endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from openmaker.serving.service import Serving

if TYPE_CHECKING:
    from openmaker.api.operations import Handlers


class ServingHandlers:
    def __init__(self, serving: Serving) -> None:
        self.serving = serving

    def register(self, handlers: Handlers) -> None:
        models, configs, endpoints = (
            self.serving.models,
            self.serving.configs,
            self.serving.endpoints,
        )

        def deleted(delete: Any, member: str) -> Any:
            def handler(params: dict[str, Any]) -> dict[str, Any]:
                delete(params[member])
                return {}

            return handler

        for operation, handler in {
            "CreateModel": models.create,
            "DescribeModel": lambda p: models.describe(p["ModelName"]),
            "ListModels": models.list,
            "DeleteModel": deleted(models.delete, "ModelName"),
            "CreateEndpointConfig": configs.create,
            "DescribeEndpointConfig": lambda p: configs.describe(p["EndpointConfigName"]),
            "ListEndpointConfigs": configs.list,
            "DeleteEndpointConfig": deleted(configs.delete, "EndpointConfigName"),
            "CreateEndpoint": endpoints.create,
            "DescribeEndpoint": lambda p: endpoints.describe(p["EndpointName"]),
            "ListEndpoints": endpoints.list,
            "DeleteEndpoint": deleted(endpoints.delete, "EndpointName"),
            "UpdateEndpoint": endpoints.update,
            "UpdateEndpointWeightsAndCapacities": endpoints.update_weights_and_capacities,
        }.items():
            handlers.register("sagemaker", operation, handler)
