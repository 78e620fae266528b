"""STS's GetCallerIdentity: the caller is the server's role, `openmaker`, in its account.

The sagemaker SDKs ask it for the account (the default bucket is
`sagemaker-<region>-<account>`) and for the execution role (an assumed role's ARN names it).
"""

from __future__ import annotations

from typing import Any

from openmaker.api.iam import role_id
from openmaker.api.query import QueryService
from openmaker.shapes.arn import EXECUTION_ROLE, assumed_role_arn

SESSION_NAME = "openmaker"


def caller_identity(account_id: str) -> dict[str, Any]:
    return {
        "UserId": f"{role_id(EXECUTION_ROLE, account_id)}:{SESSION_NAME}",
        "Account": account_id,
        "Arn": assumed_role_arn(EXECUTION_ROLE, SESSION_NAME, account_id),
    }


def service(account_id: str) -> QueryService:
    return QueryService(
        "sts", "sts", {"GetCallerIdentity": lambda _params: caller_identity(account_id)}
    )
