"""A botocore client plugin: calls aimed at AWS go to the endpoint `openmaker env` names instead.

botocore honours `AWS_ENDPOINT_URL_<SERVICE>` only for clients made without an explicit
`endpoint_url`. The sagemaker SDKs (v2, and v3's Session) make their STS client with one:
`https://sts.<region>.amazonaws.com`, looked up in botocore's endpoint data, so the variable
never reaches it. `openmaker env` names this module in `BOTOCORE_EXPERIMENTAL__PLUGINS` (which
botocore reads when it makes a client); for every client of a service whose
`AWS_ENDPOINT_URL_<SERVICE>` is set, a request about to go to an AWS host goes to that endpoint.
It is signed after the change, for the new address.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# The DNS suffixes of AWS's endpoints (commercial, China, dual-stack).
AWS_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")


def initialize_client_plugin(client: Any) -> None:
    """botocore's entry point, called once for each client it makes."""
    service_id = client.meta.service_model.service_id
    endpoint = os.environ.get(endpoint_variable(str(service_id)))
    if endpoint:
        client.meta.events.register(
            f"before-call.{service_id.hyphenize()}", partial(_redirect, endpoint)
        )


def endpoint_variable(service_id: str) -> str:
    """`AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`: botocore's own names."""
    return "AWS_ENDPOINT_URL_" + service_id.replace(" ", "_").upper()


def _redirect(endpoint: str, params: dict[str, Any], **_kwargs: Any) -> None:
    url = urlsplit(params["url"])
    if not (url.hostname or "").endswith(AWS_SUFFIXES):
        return
    target = urlsplit(endpoint)
    path = target.path.rstrip("/") + url.path
    params["url"] = urlunsplit((target.scheme, target.netloc, path, url.query, url.fragment))
