"""Roles, accounts and buckets: STS and IAM on the server, as the SDKs use them.

A notebook written for SageMaker asks STS who it is, IAM what its role is, and makes its
default bucket `sagemaker-<region>-<account>`; after `eval "$(openmaker env)"` all of that is
answered here, and nothing leaves the machine (the `no_egress` fixture)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.apiserver import ApiServer
from tests.egress import Egress
from tests.test_api_clients import TRAIN_PY, client_env

ACCOUNT = "000000000000"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/openmaker"
CALLER = f"arn:aws:sts::{ACCOUNT}:assumed-role/openmaker/openmaker"


@pytest.fixture
def openmaker_env(api_server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's boto3, configured by `openmaker env` alone."""
    for name, value in client_env(api_server, tmp_path / "client-home").items():
        monkeypatch.setenv(name, value)
    for name in list(os.environ):
        if name.startswith("AWS_") and name not in api_server.env:
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("openmaker_env")
def test_sts_and_iam_answer_as_aws(api_server: ApiServer, no_egress: Egress) -> None:
    sts = boto3.client("sts")
    identity = sts.get_caller_identity()
    assert (identity["Account"], identity["Arn"]) == (ACCOUNT, CALLER)
    assert identity["UserId"].startswith("AROA") and identity["UserId"].endswith(":openmaker")
    # The SDKs make their STS client with AWS's regional endpoint spelled out, which botocore
    # never replaces by AWS_ENDPOINT_URL_STS: openmaker's botocore plugin sends it here.
    explicit = boto3.client("sts", endpoint_url="https://sts.us-east-1.amazonaws.com")
    assert explicit.get_caller_identity()["Arn"] == CALLER

    iam = boto3.client("iam")
    role = iam.get_role(RoleName="openmaker")["Role"]
    assert role["Arn"] == ROLE and role["Path"] == "/"
    trust = role["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole"
    # Every role a notebook names exists: openmaker grants nothing by roles.
    named = iam.get_role(RoleName="SageMakerRole")["Role"]
    assert named["Arn"] == f"arn:aws:iam::{ACCOUNT}:role/SageMakerRole"
    assert named["RoleId"] != role["RoleId"]

    # SDK v3's role validation: every action allowed, over pages (MaxItems, Marker).
    actions = ["sagemaker:CreateTrainingJob", "s3:PutObject", "logs:PutLogEvents"]
    pages = list(
        iam.get_paginator("simulate_principal_policy").paginate(
            PolicySourceArn=ROLE,
            ActionNames=actions,
            ResourceArns=["arn:aws:s3:::a/*", "arn:aws:s3:::b/*"],
            PaginationConfig={"PageSize": 4},
        )
    )
    results = [r for page in pages for r in page["EvaluationResults"]]
    assert len(pages) == 2 and len(results) == 6
    assert {r["EvalActionName"] for r in results} == set(actions)
    assert {r["EvalDecision"] for r in results} == {"allowed"}


@pytest.mark.usefixtures("openmaker_env")
def test_sts_and_iam_errors_are_aws_errors(api_server: ApiServer, no_egress: Egress) -> None:
    iam = boto3.client("iam")
    with pytest.raises(ClientError) as bad_name:
        iam.get_role(RoleName="no spaces allowed")
    assert bad_name.value.response["Error"]["Code"] == "ValidationError"
    assert "RoleName" in bad_name.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as unserved:
        iam.create_role(RoleName="new", AssumeRolePolicyDocument="{}")
    assert unserved.value.response["Error"]["Code"] == "InvalidAction"
    with pytest.raises(ClientError) as not_a_principal:
        iam.simulate_principal_policy(
            PolicySourceArn="arn:aws:s3:::some-bucket", ActionNames=["s3:GetObject"]
        )
    assert not_a_principal.value.response["Error"]["Code"] == "InvalidInput"

    key = api_server.env["AWS_ACCESS_KEY_ID"]
    wrong_secret = boto3.client("sts", aws_access_key_id=key, aws_secret_access_key="x" * 40)
    with pytest.raises(ClientError) as mismatch:
        wrong_secret.get_caller_identity()
    assert mismatch.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    stranger = boto3.client("iam", aws_access_key_id="AKIDSTRANGER", aws_secret_access_key="x")
    with pytest.raises(ClientError) as unknown:
        stranger.get_role(RoleName="openmaker")
    assert unknown.value.response["Error"]["Code"] == "InvalidClientTokenId"


def query_post(server: ApiServer, body: bytes, service: str = "iam") -> tuple[int, str]:
    """`body` POSTed form-encoded, signed for `service` with the server's key pair: (HTTP
    status, the error code of an ErrorResponse, or "" for an answer)."""
    url = server.env["AWS_ENDPOINT_URL_IAM"] + "/"
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    credentials = Credentials(server.env["AWS_ACCESS_KEY_ID"], server.env["AWS_SECRET_ACCESS_KEY"])
    SigV4Auth(credentials, service, server.env["AWS_REGION"]).add_auth(request)
    call = urllib.request.Request(url, data=body, headers=dict(request.headers), method="POST")
    try:
        with urllib.request.urlopen(call, timeout=30) as answer:
            return answer.status, ""
    except urllib.error.HTTPError as error:
        root = ET.fromstring(error.read())
        code = root.find("{*}Error/{*}Code")
        return error.code, code.text or "" if code is not None else ""


def test_malformed_query_requests_get_aws_errors(api_server: ApiServer, no_egress: Egress) -> None:
    """Whatever the form holds, the answer is an AWS error of the query services, never a 5xx."""
    get_role = b"Action=GetRole&Version=2010-05-08&RoleName="
    assert query_post(api_server, get_role + b"openmaker") == (200, "")
    assert query_post(api_server, get_role + b"\xff") == (400, "MalformedQueryString")
    assert query_post(api_server, get_role + b"a&RoleName=b") == (400, "MalformedQueryString")
    many = b"&".join(b"F%d=1" % i for i in range(20_000))
    assert query_post(api_server, get_role + b"a&" + many) == (400, "MalformedQueryString")
    assert query_post(api_server, b"Version=2010-05-08") == (400, "InvalidAction")
    assert query_post(api_server, b"Action=GetRole&Version=2011-06-15&RoleName=a") == (
        400,
        "InvalidAction",
    )
    assert query_post(api_server, b"Action=GetRole&Version=2010-05-08") == (400, "ValidationError")
    simulate = b"Action=SimulatePrincipalPolicy&Version=2010-05-08&PolicySourceArn=" + (
        ROLE.encode() + b"&ActionNames.member.1=s3:GetObject"
    )
    assert query_post(api_server, simulate + b"&MaxItems=many") == (400, "ValidationError")
    assert query_post(api_server, simulate + b"&Marker=99") == (400, "InvalidInput")
    assert query_post(api_server, simulate + b"&ActionNames.member.7=x") == (200, "")
    # Signed for a service openmaker serves, but not one of the query protocol.
    assert query_post(api_server, get_role + b"a", service="sagemaker") == (
        403,
        "SignatureDoesNotMatch",
    )
    unsigned = urllib.request.Request(
        api_server.env["AWS_ENDPOINT_URL_STS"] + "/",
        data=b"Action=GetCallerIdentity&Version=2011-06-15",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unsigned, timeout=30)
    assert refused.value.code == 403
    assert b"<Code>MissingAuthenticationToken</Code>" in refused.value.read()


NOTEBOOK = """
import sagemaker
from sagemaker.sklearn import SKLearn

role = sagemaker.get_execution_role()
print("ROLE", role)
session = sagemaker.Session()
bucket = session.default_bucket()
print("BUCKET", bucket)
print("AGAIN", sagemaker.session.Session().default_bucket())
print("NAMED", sagemaker.session.generate_default_sagemaker_bucket_name(session.boto_session))
print("EXPANDED", session.expand_role("SageMakerRole"))
# The SDK's own ownership check of the default bucket.
s3 = session.boto_session.client("s3")
s3.head_bucket(Bucket=bucket, ExpectedBucketOwner=session.account_id())
train = session.upload_data("data", key_prefix="notebook/train")
print("DATA", train)
estimator = SKLearn(entry_point="train.py", source_dir="src", framework_version="1.2-1",
                    py_version="py3", instance_count=1, instance_type="ml.m5.xlarge",
                    hyperparameters={"alpha": 0.25})
print("CONFIGURED", estimator.role)
estimator.fit({"train": train})
print("JOB", estimator.latest_training_job.name)
print("SOURCE", estimator.uploaded_code.s3_prefix)
print("MODEL", estimator.model_data)
"""


def test_sdk_v2_without_bucket_or_role(
    api_server: ApiServer, tmp_path: Path, no_egress: Egress
) -> None:
    """The notebook as written for SageMaker: no default_bucket, no role, no session; the SDK
    uploads the data and the source to the default bucket, and the job runs."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data.csv").write_text("1,2\n3,4\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(TRAIN_PY)
    (tmp_path / "notebook.py").write_text(NOTEBOOK)
    done = subprocess.run(
        no_egress.command([sys.executable, "notebook.py"]),
        env=client_env(api_server, tmp_path / "client-home"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    printed = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    bucket = f"sagemaker-us-east-1-{ACCOUNT}"
    assert printed["ROLE"] == ROLE
    assert printed["BUCKET"] == printed["AGAIN"] == printed["NAMED"] == bucket
    assert printed["EXPANDED"] == f"arn:aws:iam::{ACCOUNT}:role/SageMakerRole"
    assert printed["DATA"] == f"s3://{bucket}/notebook/train"
    assert printed["CONFIGURED"] == ROLE
    assert "script mode read 2 rows with alpha=0.25" in done.stdout
    job = printed["JOB"]
    assert printed["SOURCE"] == f"s3://{bucket}/{job}/source/sourcedir.tar.gz"
    assert printed["MODEL"] == f"s3://{bucket}/{job}/output/model.tar.gz"
    s3 = api_server.client("s3")
    assert s3.head_object(Bucket=bucket, Key=f"{job}/source/sourcedir.tar.gz")["ContentLength"]
    described = api_server.client("sagemaker").describe_training_job(TrainingJobName=job)
    assert described["TrainingJobStatus"] == "Completed"
    assert described["RoleArn"] == ROLE
