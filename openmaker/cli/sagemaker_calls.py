"""SageMaker operations for the CLI's serving commands, one result shape (the API's) either
way: through the server with boto3 when AWS_ENDPOINT_URL_SAGEMAKER names one, else on this
machine's own database through the services the server itself uses (the requests checked
against the botocore model first, as the server checks them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openmaker.connection import server_configured
from openmaker.settings import Settings
from openmaker.shapes.errors import ServiceError

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class CallFailed(Exception):
    """An operation was refused or failed; the message is the service's."""


class _Collected:
    """Takes the handlers the API registers (api/serving.py), to call them in process."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}

    def register(self, service: str, operation: str, handler: Handler) -> None:
        self.handlers[operation] = handler


class SageMakerCalls:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.remote = server_configured(settings)
        self._local: dict[str, Handler] | None = None

    def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """`operation` (CreateModel, ...) with `params`; CallFailed says why not."""
        if self.remote:
            from botocore import xform_name
            from botocore.exceptions import BotoCoreError, ClientError

            from openmaker.cli.remote import client as remote_client  # boto3: only here

            client = remote_client("sagemaker")  # one per command
            try:
                result: dict[str, Any] = getattr(client, xform_name(operation))(**params)
            except ClientError as exc:
                raise CallFailed(exc.response["Error"].get("Message", str(exc))) from None
            except BotoCoreError as exc:
                raise CallFailed(str(exc)) from None
            result.pop("ResponseMetadata", None)
            return result
        from openmaker.shapes.validate import validate_input

        try:
            validate_input(operation, params)
            return self._handlers()[operation](params)
        except ServiceError as exc:
            raise CallFailed(str(exc)) from None

    def pages(self, operation: str, member: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a List operation's `member`, page after page."""
        found: list[dict[str, Any]] = []
        params = {"MaxResults": 100, **params}
        while True:
            page = self.call(operation, **params)
            found += page[member]
            if not page.get("NextToken"):
                return found
            params["NextToken"] = page["NextToken"]

    def _handlers(self) -> dict[str, Handler]:
        if self._local is None:
            from openmaker.api.serving import ServingHandlers
            from openmaker.serving.service import Serving

            collected = _Collected()
            ServingHandlers(Serving(self.settings)).register(collected)  # type: ignore[arg-type]
            collected.handlers["DescribeTrainingJob"] = self._describe_training_job
            self._local = collected.handlers
        return self._local

    def _describe_training_job(self, params: dict[str, Any]) -> dict[str, Any]:
        from openmaker.training.service import TrainingJobs  # the job machinery: only here

        return TrainingJobs(self.settings).describe(params["TrainingJobName"])
