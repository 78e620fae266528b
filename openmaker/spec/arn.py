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
