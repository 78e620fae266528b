"""ARNs of the resources openmaker serves, shaped as SageMaker shapes them."""

from __future__ import annotations


def resource_arn(kind: str, name: str, region: str, account_id: str, partition: str = "aws") -> str:
    """`arn:aws:sagemaker:<region>:<account>:<kind>/<name>`.

    SageMaker lowercases the resource name in its ARNs (a job "Demo-1" has the ARN
    ".../training-job/demo-1"), while the name itself keeps its case.
    """
    return f"arn:{partition}:sagemaker:{region}:{account_id}:{kind}/{name.lower()}"


def training_job_arn(name: str, region: str, account_id: str) -> str:
    return resource_arn("training-job", name, region, account_id)


# openmaker has no IAM: the server's key pair acts as this one role, and every role a request
# names is taken as it is. The SDKs ask STS who the caller is and IAM what its role is.
EXECUTION_ROLE = "openmaker"


def role_arn(name: str, account_id: str, partition: str = "aws") -> str:
    """`arn:aws:iam::<account>:role/<name>`: IAM ARNs name no region."""
    return f"arn:{partition}:iam::{account_id}:role/{name}"


def assumed_role_arn(role: str, session: str, account_id: str, partition: str = "aws") -> str:
    """What STS's GetCallerIdentity answers for a caller acting as `role`."""
    return f"arn:{partition}:sts::{account_id}:assumed-role/{role}/{session}"
