"""Requests an attacker would send to `openmaker server`: a captured signature replayed with
another body, signatures scoped or dated elsewhere, garbled authorization, and bodies no client
builds. Each is refused with AWS's error for it, never a 5xx, and nothing happens."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.apiserver import ApiServer, raw_post, signed_post
from tests.helpers import make_image, request

JSON_TYPE = "application/x-amz-json-1.1"
STAMP = "%Y%m%dT%H%M%SZ"
CREATE = "SageMaker.CreateTrainingJob"
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
BUCKET = "hostile-requests"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def url_of(server: ApiServer) -> str:
    return server.env["AWS_ENDPOINT_URL_SAGEMAKER"] + "/"


def sign(
    server: ApiServer,
    target: str,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    region: str | None = None,
    service: str | None = None,
    at: datetime | None = None,
) -> dict[str, str]:
    """The headers botocore's SigV4Auth puts on this request (with `headers` among the signed
    ones), as a client of the server signs it unless told otherwise."""
    signed = AWSRequest(
        method="POST",
        url=url_of(server),
        data=body,
        headers={"Content-Type": JSON_TYPE, "X-Amz-Target": target, **(headers or {})},
    )
    signer = SigV4Auth(
        Credentials(server.env["AWS_ACCESS_KEY_ID"], server.env["AWS_SECRET_ACCESS_KEY"]),
        service or ("logs" if target.startswith("Logs_") else "sagemaker"),
        region or server.env["AWS_REGION"],
    )
    if at is None:
        signer.add_auth(signed)
    else:  # botocore reads its clock as naive UTC
        naive = at.astimezone(UTC).replace(tzinfo=None)
        with mock.patch("botocore.auth.get_current_datetime", return_value=naive):
            signer.add_auth(signed)
    return dict(signed.headers.items())


def job_exists(server: ApiServer, name: str) -> bool:
    status, answer = signed_post(
        server, "SageMaker.DescribeTrainingJob", json.dumps({"TrainingJobName": name}).encode()
    )
    if status == 200:
        return True
    assert answer["__type"] == "ResourceNotFound", answer
    return False


@pytest.fixture(scope="module", autouse=True)
def output_bucket(api_server: ApiServer) -> None:
    api_server.client("s3").create_bucket(Bucket=BUCKET)


def job_body(name: str, tmp_path: Path, **extra: Any) -> bytes:
    image = make_image(tmp_path / unique("image"), "#!/bin/sh\necho hello\n")
    return json.dumps(request(name, str(image), f"s3://{BUCKET}/out", **extra)).encode()


def test_a_captured_signature_does_not_sign_another_body(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """The attacker holds one request a client signed and sends it again with a body of its
    own: a checkpoint on the host, under a new name."""
    wanted, forged = unique("wanted"), unique("forged")
    original = job_body(wanted, tmp_path)
    replacement = job_body(
        forged, tmp_path, CheckpointConfig={"S3Uri": f"file://{tmp_path}/planted"}
    )
    hash_of = {body: hashlib.sha256(body).hexdigest() for body in (original, replacement)}
    captured = sign(api_server, CREATE, original)
    url = url_of(api_server)

    # The body alone swapped; then with an unsigned x-amz-content-sha256 naming the signed
    # body's hash (what the old server took as the payload's hash), or the new body's.
    for claimed in (None, hash_of[original], hash_of[replacement], "UNSIGNED-PAYLOAD"):
        headers = dict(captured)
        if claimed is not None:
            headers["X-Amz-Content-SHA256"] = claimed
        status, answer = raw_post(url, replacement, headers)
        assert (status, answer.get("__type")) == (400, "InvalidSignatureException"), (
            claimed,
            answer,
        )

    # A client that signs x-amz-content-sha256 (as S3 clients do): the header is signed, but
    # it is a claim about the body, and the body sent is another one.
    captured_with_hash = sign(
        api_server, CREATE, original, headers={"X-Amz-Content-SHA256": hash_of[original]}
    )
    assert "x-amz-content-sha256" in captured_with_hash["Authorization"]
    status, answer = raw_post(url, replacement, captured_with_hash)
    assert (status, answer["__type"]) == (400, "InvalidSignatureException")
    assert "x-amz-content-sha256" in answer["message"]

    # UNSIGNED-PAYLOAD, even signed, does not sign for any body on these JSON services.
    unsigned = sign(
        api_server, CREATE, replacement, headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}
    )
    status, answer = raw_post(url, replacement, unsigned)
    assert (status, answer["__type"]) == (400, "InvalidSignatureException")
    assert "UNSIGNED-PAYLOAD" in answer["message"]

    assert not job_exists(api_server, forged)
    assert not (tmp_path / "planted").exists()
    # The captured request itself, with its own body and a true signed hash, is good.
    status, answer = raw_post(url, original, captured_with_hash)
    assert status == 200, answer
    assert job_exists(api_server, wanted)


def other_region(server: ApiServer) -> str:
    return "eu-west-1" if server.env["AWS_REGION"] != "eu-west-1" else "us-west-2"


def test_the_credential_scope_names_this_region_and_the_service(api_server: ApiServer) -> None:
    body = json.dumps({"MaxResults": 1}).encode()
    url = url_of(api_server)
    elsewhere = other_region(api_server)

    status, answer = raw_post(url, body, sign(api_server, "SageMaker.ListTrainingJobs", body))
    assert status == 200, answer
    status, answer = raw_post(
        url, body, sign(api_server, "SageMaker.ListTrainingJobs", body, region=elsewhere)
    )
    assert (status, answer["__type"]) == (400, "InvalidSignatureException")
    assert answer["message"] == f"Credential should be scoped to a valid region, not '{elsewhere}'."

    # boto3 configured for another region, unchanged otherwise.
    with pytest.raises(ClientError) as caught:
        api_server.client("sagemaker", region_name=elsewhere).list_training_jobs()
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert elsewhere in caught.value.response["Error"]["Message"]

    cases = [
        ("SageMaker.ListTrainingJobs", "logs", "'sagemaker'"),
        ("Logs_20140328.DescribeLogGroups", "sagemaker", "'logs'"),
        ("SageMaker.ListTrainingJobs", "s3", "'sagemaker'"),
        ("GraniteServiceVersion20100801.ListMetrics", "sagemaker", "'monitoring'"),
        # An S3 signature says nothing for this API, whatever the target.
        ("NoSuchService.Anything", "s3", "'logs' or 'monitoring' or 'sagemaker'"),
    ]
    for target, service, wanted in cases:
        status, answer = raw_post(url, body, sign(api_server, target, body, service=service))
        assert (status, answer["__type"]) == (400, "InvalidSignatureException"), target
        assert answer["message"] == f"Credential should be scoped to correct service: {wanted}."


def test_signatures_dated_too_early_or_too_late(api_server: ApiServer) -> None:
    body = json.dumps({"MaxResults": 1}).encode()
    target, url = "SageMaker.ListTrainingJobs", url_of(api_server)
    now = datetime.now(UTC)

    past = now - timedelta(minutes=20)
    status, answer = raw_post(url, body, sign(api_server, target, body, at=past))
    assert (status, answer["__type"]) == (400, "InvalidSignatureException")
    assert re.fullmatch(
        rf"Signature expired: {past:{STAMP}} is now earlier than \d{{8}}T\d{{6}}Z "
        r"\(\d{8}T\d{6}Z - 15 min\.\)",
        answer["message"],
    ), answer

    future = now + timedelta(minutes=20)
    status, answer = raw_post(url, body, sign(api_server, target, body, at=future))
    assert (status, answer["__type"]) == (400, "InvalidSignatureException")
    assert re.fullmatch(
        rf"Signature not yet current: {future:{STAMP}} is still later than \d{{8}}T\d{{6}}Z "
        r"\(\d{8}T\d{6}Z \+ 15 min\.\)",
        answer["message"],
    ), answer

    # Within AWS's 15 minutes either way, a clock a little off is fine.
    for skew in (timedelta(minutes=-10), timedelta(minutes=10)):
        status, answer = raw_post(url, body, sign(api_server, target, body, at=now + skew))
        assert status == 200, (skew, answer)


def test_dates_not_in_basic_format_are_refused(api_server: ApiServer) -> None:
    """X-Amz-Date is read by hand (no strptime): only a real `YYYYMMDDTHHMMSSZ` passes."""
    body = json.dumps({"MaxResults": 1}).encode()
    target, url = "SageMaker.ListTrainingJobs", url_of(api_server)
    headers = sign(api_server, target, body)
    today = headers["X-Amz-Date"][:8]
    for date in (
        f"{today}T240000Z",  # no hour 24
        f"{today}T126000Z",
        f"{today[:4]}1301T000000Z",  # no month 13
        f"{today[:6]}32T000000Z",
        f"{today}T1200Z",  # a field short
        f"{today}T12000\u00b2Z",  # a digit, but not an ASCII one
        f"{today}T120000",
        f"{today[:4]}-{today[4:6]}-{today[6:]}T12:00:00Z",
    ):
        status, answer = raw_post(url, body, {**headers, "X-Amz-Date": date})
        assert (status, answer["__type"]) == (400, "IncompleteSignatureException"), date
        assert answer["message"].startswith("Date must be in ISO-8601 'basic format'."), date


def test_missing_and_garbled_authorization(api_server: ApiServer) -> None:
    body = json.dumps({"MaxResults": 1}).encode()
    target, url = "SageMaker.ListTrainingJobs", url_of(api_server)
    good = sign(api_server, target, body)
    key = api_server.env["AWS_ACCESS_KEY_ID"]
    scope = f"{good['X-Amz-Date'][:8]}/{api_server.env['AWS_REGION']}/sagemaker/aws4_request"

    unsigned = {k: v for k, v in good.items() if k != "Authorization"}
    status, answer = raw_post(url, body, unsigned)
    assert (status, answer) == (
        403,
        {
            "__type": "MissingAuthenticationTokenException",
            "message": "Missing Authentication Token",
        },
    )

    garbled = {
        "AWS4-HMAC-SHA256": "Authorization header requires 'Credential' parameter.",
        "Bearer abc.def": "Unsupported Authorization Type",
        f"AWS4-HMAC-SHA256 Credential={key}/{scope} SignedHeaders=host Signature=00": "requires "
        "'Signature'",
        "AWS4-HMAC-SHA256 Credential, SignedHeaders=host, Signature=00": "not a valid key=value",
        f"AWS4-HMAC-SHA256 Credential={key}/{scope}, Signature=00": "requires 'SignedHeaders'",
        f"AWS4-HMAC-SHA256 Credential={key}, SignedHeaders=host, Signature=00": "5 "
        "slash-delimited elements",
        f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders=host;x-nothing, "
        "Signature=00": "'x-nothing' is named as a SignedHeader",
        f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders=x-amz-date, "
        "Signature=00": "'Host' must be a 'SignedHeader'",
    }
    for authorization, says in garbled.items():
        status, answer = raw_post(url, body, {**good, "Authorization": authorization})
        assert (status, answer["__type"]) == (400, "IncompleteSignatureException"), authorization
        assert says in answer["message"], (authorization, answer)

    # A key no ASCII string equals (the old comparison raised on it: a 500).
    foreign = good["Authorization"].replace(key, "KÉY" + key[3:])
    status, answer = raw_post(url, body, {**good, "Authorization": foreign})
    assert (status, answer["__type"]) == (400, "UnrecognizedClientException")

    undated = {k: v for k, v in good.items() if k != "X-Amz-Date"}
    status, answer = raw_post(url, body, undated)
    assert (status, answer["__type"]) == (400, "IncompleteSignatureException")
    status, answer = raw_post(url, body, {**good, "X-Amz-Date": "yesterday"})
    assert (status, answer["__type"]) == (400, "IncompleteSignatureException")
    assert "ISO-8601" in answer["message"]


@pytest.fixture(scope="module")
def ended_job(api_server: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A job that ran and logged: its ARN and its log stream (queries then reach the
    database, past the not-found checks)."""
    name = unique("logged")
    sagemaker = api_server.client("sagemaker")
    sagemaker.create_training_job(**json.loads(job_body(name, tmp_path_factory.mktemp("job"))))
    deadline = time.monotonic() + 60
    while (described := sagemaker.describe_training_job(TrainingJobName=name))[
        "TrainingJobStatus"
    ] not in ("Completed", "Failed", "Stopped"):
        assert time.monotonic() < deadline, described
        time.sleep(0.5)
    streams = api_server.client("logs").describe_log_streams(
        logGroupName=LOG_GROUP, logStreamNamePrefix=name
    )["logStreams"]
    return {"arn": described["TrainingJobArn"], "stream": streams[0]["logStreamName"]}


BIG = 10**25


def malformed(job: dict[str, str]) -> Iterator[tuple[str, str, bytes, str, str]]:
    """(case, target, body, error code, what the message must name)."""
    deep = b"[" * 10_000 + b"]" * 10_000
    yield (
        "nested 10,000 deep",
        "SageMaker.ListTrainingJobs",
        b'{"NameContains":' + deep + b"}",
        ("SerializationException"),
        "deeper than",
    )
    yield (
        "nested 100 deep",
        "SageMaker.ListTags",
        (b'{"ResourceArn":' + b"[" * 100 + b"]" * 100 + b"}"),
        "SerializationException",
        "deeper than",
    )
    yield (
        "lone surrogate",
        "SageMaker.ListTrainingJobs",
        b'{"NameContains":"a\\ud800"}',
        ("SerializationException"),
        "'NameContains'",
    )
    yield (
        "lone low surrogate in a name",
        "SageMaker.DescribeTrainingJob",
        (b'{"TrainingJobName":"\\udfff"}'),
        "SerializationException",
        "'TrainingJobName'",
    )
    yield (
        "surrogate as a member name",
        "SageMaker.ListTrainingJobs",
        b'{"\\ud83d":1}',
        ("SerializationException"),
        "member name",
    )
    yield (
        "surrogate in a tag",
        "SageMaker.AddTags",
        json.dumps({"ResourceArn": job["arn"], "Tags": [{"Key": "k", "Value": "\udc00"}]}).encode(),
        "SerializationException",
        "'Tags.1.member.Value'",
    )
    yield (
        "surrogate in a log filter",
        "Logs_20140328.FilterLogEvents",
        json.dumps({"logGroupName": LOG_GROUP, "filterPattern": "\ud800x"}).encode(),
        "SerializationException",
        "'filterPattern'",
    )
    yield (
        "huge MaxResults",
        "SageMaker.ListTags",
        json.dumps({"ResourceArn": job["arn"], "MaxResults": BIG}).encode(),
        "ValidationException",
        "'MaxResults'",
    )
    yield (
        "huge startTime",
        "Logs_20140328.GetLogEvents",
        json.dumps(
            {"logGroupName": LOG_GROUP, "logStreamName": job["stream"], "startTime": BIG}
        ).encode(),
        "ValidationException",
        "'startTime'",
    )
    yield (
        "huge filter window",
        "Logs_20140328.FilterLogEvents",
        json.dumps({"logGroupName": LOG_GROUP, "startTime": BIG, "endTime": BIG}).encode(),
        "ValidationException",
        "'endTime'",
    )
    yield (
        "int beyond 32 bits",
        CREATE,
        json.dumps(
            {"TrainingJobName": "x", "StoppingCondition": {"MaxRuntimeInSeconds": 2**40}}
        ).encode(),
        "ValidationException",
        "'StoppingCondition.MaxRuntimeInSeconds'",
    )
    yield (
        "5,000 digits",
        "SageMaker.ListTrainingJobs",
        b'{"MaxResults":1' + b"0" * 5000 + b"}",
        ("SerializationException"),
        "not valid JSON",
    )
    for number in (b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity"):
        yield (
            f"number {number.decode()}",
            "SageMaker.ListTrainingJobs",
            (b'{"CreationTimeAfter":' + number + b"}"),
            "SerializationException",
            "'CreationTimeAfter'",
        )
    yield (
        "wrong type",
        "SageMaker.ListTrainingJobs",
        b'{"MaxResults":"ten"}',
        ("ValidationException"),
        "'MaxResults'",
    )
    yield "not JSON", "SageMaker.ListTrainingJobs", b"{not json", "SerializationException", "JSON"
    yield (
        "not UTF-8",
        "SageMaker.ListTrainingJobs",
        b'{"NameContains":"\xff"}',
        ("SerializationException"),
        "JSON",
    )
    for document in (b"[]", b'"x"', b"null", b"1"):
        yield (
            f"a {document.decode()} document",
            "SageMaker.ListTrainingJobs",
            document,
            ("SerializationException"),
            "JSON object",
        )
    for target in ("", "SageMaker", "SageMaker.", ".ListTrainingJobs", "Nope.List", "SageMaker.X"):
        yield f"target {target!r}", target, b"{}", "UnknownOperationException", "operation"


def test_malformed_requests_are_4xx_naming_the_problem(
    api_server: ApiServer, ended_job: dict[str, str]
) -> None:
    wrong = []
    for case, target, body, code, names in malformed(ended_job):
        status, answer = signed_post(api_server, target, body)
        if not (status == 400 and answer.get("__type") == code and names in answer["message"]):
            wrong.append((case, status, answer))
    assert wrong == []


def send_partly(server: ApiServer, headers: dict[str, str], chunks: list[bytes]) -> Any:
    """Send the headers and `chunks`, then read the answer without sending the rest."""
    address = urlsplit(url_of(server))
    assert address.hostname is not None
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.putrequest("POST", "/")
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        try:
            for chunk in chunks:
                connection.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking it all: the point
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def test_an_oversized_body_is_refused_without_being_read(api_server: ApiServer) -> None:
    headers = {"Content-Type": JSON_TYPE, "X-Amz-Target": "SageMaker.ListTrainingJobs"}
    # 1 GiB announced, 1 KiB sent: the answer comes without the rest.
    started = time.monotonic()
    status, answer = send_partly(
        api_server, {**headers, "Content-Length": str(2**30)}, [b"{" + b" " * 1023]
    )
    assert (status, answer["__type"]) == (413, "RequestEntityTooLargeException")
    assert str(2**30) in answer["message"]
    assert time.monotonic() - started < 5
    # Chunked, so no length is announced: refused once past the limit, not read to the end.
    chunk = b" " * 2**20
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    status, answer = send_partly(
        api_server, {**headers, "Transfer-Encoding": "chunked"}, [framed] * 5
    )
    assert (status, answer["__type"]) == (413, "RequestEntityTooLargeException")
