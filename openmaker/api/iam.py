"""The IAM operations the sagemaker SDKs call: GetRole and SimulatePrincipalPolicy.

openmaker has no IAM. The server's key pair acts as the role `openmaker`, and the role a
request names is recorded, never used to grant anything (a job's code gets keys of its own,
scoped to its request's places). So every role name exists here, trusts SageMaker, and may
do whatever it asks: that is what lets the SDKs' role look-ups and checks (SDK v2's
`get_execution_role` and `expand_role`, v3's role validation) pass unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from openmaker.api.query import QueryService, modeled_error
from openmaker.shapes.arn import role_arn

# The trust policy SageMaker execution roles carry: the SDKs check it names SageMaker.
TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "sagemaker.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
# No role here was ever created; a fixed date says so rather than invent one.
CREATED = datetime(1970, 1, 1, tzinfo=UTC)
# IAM's own default page size for SimulatePrincipalPolicy.
DEFAULT_PAGE = 100


def role_id(name: str, account_id: str) -> str:
    """A stable role ID of IAM's form (`AROA` and 17 characters), the same for the same role."""
    digest = hashlib.sha256(f"{account_id}:{name}".encode()).digest()
    return "AROA" + base64.b32encode(digest).decode()[:17]


def role(name: str, account_id: str) -> dict[str, Any]:
    return {
        "Path": "/",
        "RoleName": name,
        "RoleId": role_id(name, account_id),
        "Arn": role_arn(name, account_id),
        "CreateDate": CREATED,
        # IAM answers policy documents URL-encoded; botocore decodes them.
        "AssumeRolePolicyDocument": quote(json.dumps(TRUST_POLICY, separators=(",", ":"))),
        "Description": "openmaker has no IAM: every role exists and may do what openmaker does",
        "MaxSessionDuration": 3600,
    }


def service(account_id: str) -> QueryService:
    def get_role(params: dict[str, Any]) -> dict[str, Any]:
        return {"Role": role(params["RoleName"], account_id)}

    return QueryService(
        "iam",
        "iam",
        {"GetRole": get_role, "SimulatePrincipalPolicy": simulate_principal_policy},
    )


def simulate_principal_policy(params: dict[str, Any]) -> dict[str, Any]:
    """Every action allowed on every resource asked about, one result for each pair."""
    source = params["PolicySourceArn"]
    if ":iam::" not in source or not any(
        f":{kind}/" in source for kind in ("role", "user", "group")
    ):
        raise modeled_error(
            "iam",
            "InvalidInputException",
            f"Invalid Entity Arn: {source} does not name an IAM user, group or role.",
        )
    resources = params.get("ResourceArns") or ["*"]
    results = [
        {
            "EvalActionName": action,
            "EvalResourceName": resource,
            "EvalDecision": "allowed",
            "MatchedStatements": [],
            "MissingContextValues": [],
        }
        for action in params["ActionNames"]
        for resource in resources
    ]
    start = _marker(params.get("Marker"), len(results))
    end = start + params.get("MaxItems", DEFAULT_PAGE)
    page: dict[str, Any] = {"EvaluationResults": results[start:end], "IsTruncated": False}
    if end < len(results):
        page.update(IsTruncated=True, Marker=str(end))
    return page


def _marker(marker: str | None, count: int) -> int:
    if marker is None:
        return 0
    if not marker.isdigit() or int(marker) > count:
        raise modeled_error("iam", "InvalidInputException", f"Invalid Marker: {marker[:100]}")
    return int(marker)
