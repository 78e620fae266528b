"""The validation of algorithms and model packages.

An algorithm's: each of its `ValidationProfiles` runs its `TrainingJobDefinition` as a real
training job with the algorithm, then (when the profile has one) its `TransformJobDefinition`
as a batch transform job on the model that job trained, served by the algorithm's first
inference container. A model package's: each profile's `TransformJobDefinition` as a batch
transform job on a model that names the package.

Everything is kept in the database: a profile's step, and its jobs' names, derived from what
is validated (`<name>-v<profile number>-<8 hex digits of its ARN and creation time>`, the name
of the training job, of the model and of the transform job alike). `advance` moves every
profile on as far as its jobs have gone; it is idempotent, so the server's background sweep and
Describe may both call it, and after a restart it picks up where it was (a job it was about to
create and did not is created then).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from openmaker.algorithms import service
from openmaker.algorithms.digests import pinned
from openmaker.algorithms.packages import ModelPackages
from openmaker.algorithms.service import Algorithms
from openmaker.jobs.db import AlgorithmRecord, ModelPackageRecord
from openmaker.shapes.errors import ResourceNotFound, ValidationException
from openmaker.shapes.validate import validate_input

if TYPE_CHECKING:
    from openmaker.serving.models import Models
    from openmaker.training.service import TrainingJobs
    from openmaker.transform.service import TransformJobs

log = logging.getLogger("openmaker.algorithms")

NOT_STARTED, IN_PROGRESS, COMPLETED, FAILED = "NotStarted", "InProgress", "Completed", "Failed"
# What a profile waits for, kept beside its status (never shown).
TRAINING, TRANSFORM = "training", "transform"


def job_name(subject: AlgorithmRecord | ModelPackageRecord, index: int) -> str:
    """The name of profile `index`'s (from 1) training job, model and transform job."""
    seed = f"{subject.arn} {subject.creation_time.isoformat()}".encode()
    name = subject.name.replace("/", "-")  # a package's version: "<group>/<version>"
    return f"{name[:44]}-v{index}-{hashlib.sha256(seed).hexdigest()[:8]}"


def _overall(statuses: list[dict[str, Any]]) -> str:
    """The status of what the profiles of `statuses` validate."""
    if not all(s["Status"] in (COMPLETED, FAILED) for s in statuses):
        return service.IN_PROGRESS
    return service.FAILED if any(s["Status"] == FAILED for s in statuses) else service.COMPLETED


class Validation:
    def __init__(
        self,
        algorithms: Algorithms,
        packages: ModelPackages,
        jobs: TrainingJobs,
        models: Models,
        transforms: TransformJobs,
    ) -> None:
        self.algorithms, self.packages, self.jobs = algorithms, packages, jobs
        self.models, self.transforms = models, transforms
        self._lock = threading.Lock()  # one advance at a time: each creates a job once
        self._closed = threading.Event()

    def watch(self, every: float) -> None:
        """Advance every algorithm under validation each `every` seconds, until `close`."""

        def loop() -> None:
            while not self._closed.wait(every):
                try:
                    self.advance_all()
                except Exception:  # the next round tries again; the server goes on
                    log.exception("advancing the algorithms' validation failed")

        threading.Thread(target=loop, name="openmaker-algorithms", daemon=True).start()

    def close(self) -> None:
        self._closed.set()

    def advance_all(self) -> None:
        for advance, names in (
            (self.advance, self.algorithms.validating()),
            (self.advance_package, self.packages.validating()),
        ):
            for name in names:
                try:
                    advance(name)
                except ValidationException:  # deleted since it was listed
                    continue

    def advance(self, name_or_arn: str) -> None:
        """Move algorithm `name_or_arn`'s validation on as far as its jobs have gone."""
        with self._lock:
            algorithm = self.algorithms.get(name_or_arn)
            if algorithm.status not in (service.PENDING, service.IN_PROGRESS):
                return
            profiles = algorithm.request["ValidationSpecification"]["ValidationProfiles"]
            statuses = [dict(s) for s in algorithm.validation]
            for index, (profile, status) in enumerate(zip(profiles, statuses, strict=True), 1):
                if status["Status"] in (NOT_STARTED, IN_PROGRESS):
                    self._step(algorithm, index, profile, status)
            overall = _overall(statuses)
            if statuses != algorithm.validation or overall != algorithm.status:
                self.algorithms.record_validation(algorithm.name, overall, statuses)

    def advance_package(self, name_or_arn: str) -> None:
        """Move model package `name_or_arn`'s validation on: each profile's transform job on
        a model that names the package."""
        with self._lock:
            package = self.packages.get(name_or_arn)
            if package.status not in (service.PENDING, service.IN_PROGRESS):
                return
            specification = package.request["ValidationSpecification"]
            statuses = [dict(s) for s in package.validation]
            profiles = specification["ValidationProfiles"]
            for index, (profile, status) in enumerate(zip(profiles, statuses, strict=True), 1):
                if status["Status"] not in (NOT_STARTED, IN_PROGRESS):
                    continue
                name = job_name(package, index)
                status.update(Status=IN_PROGRESS)
                model = {
                    "ModelName": name,
                    "PrimaryContainer": {"ModelPackageName": package.arn},
                    "ExecutionRoleArn": specification["ValidationRole"],
                }
                try:
                    self._model(model)
                    if self._transform(name, profile):
                        status.update(Status=COMPLETED)
                except ProfileFailed as failure:
                    status.update(Status=FAILED, FailureReason=str(failure))
                except ValidationException as refused:
                    status.update(Status=FAILED, FailureReason=f"{name}: {refused.message}")
            overall = _overall(statuses)
            if statuses != package.validation or overall != package.status:
                self.packages.record_validation(package.name, overall, statuses)

    def _step(
        self,
        algorithm: AlgorithmRecord,
        index: int,
        profile: dict[str, Any],
        status: dict[str, Any],
    ) -> None:
        name = job_name(algorithm, index)
        try:
            if status.get("waits", TRAINING) == TRAINING:
                status.update(Status=IN_PROGRESS, waits=TRAINING)
                artifacts = self._training(algorithm, name, profile)
                if artifacts is None:
                    return
                if profile.get("TransformJobDefinition") is None:
                    status.update(Status=COMPLETED)
                    return
                # The algorithm's first inference container over what the training job made.
                container = algorithm.request["InferenceSpecification"]["Containers"][0]
                self._model(
                    {
                        "ModelName": name,
                        "PrimaryContainer": {
                            **{k: v for k, v in container.items() if k == "Environment"},
                            "Image": pinned(container, "Image", "ImageDigest"),
                            "ModelDataUrl": artifacts,
                        },
                        "ExecutionRoleArn": algorithm.request["ValidationSpecification"][
                            "ValidationRole"
                        ],
                    }
                )
                status.update(waits=TRANSFORM)
            if self._transform(name, profile):
                status.update(Status=COMPLETED)
        except ProfileFailed as failure:
            status.update(Status=FAILED, FailureReason=str(failure))
        except ValidationException as refused:
            status.update(Status=FAILED, FailureReason=f"{name}: {refused.message}")

    def _training(
        self, algorithm: AlgorithmRecord, name: str, profile: dict[str, Any]
    ) -> str | None:
        """The model artifacts of the profile's training job once it has completed; None while
        it runs (it is started if it is not yet)."""
        try:
            job = self.jobs.describe(name)
        except ResourceNotFound:
            definition = profile["TrainingJobDefinition"]
            request = {
                "TrainingJobName": name,
                "RoleArn": algorithm.request["ValidationSpecification"]["ValidationRole"],
                "AlgorithmSpecification": {
                    "AlgorithmName": algorithm.name,
                    "TrainingInputMode": definition["TrainingInputMode"],
                },
                **{k: v for k, v in definition.items() if k != "TrainingInputMode"},
            }
            self.jobs.create(request)
            return None
        if job["TrainingJobStatus"] in ("Failed", "Stopped"):
            reason = job.get("FailureReason") or job["TrainingJobStatus"].lower()
            raise ProfileFailed(f"the training job {name} failed: {reason}")
        if job["TrainingJobStatus"] != "Completed":
            return None
        return str(job["ModelArtifacts"]["S3ModelArtifacts"])

    def _model(self, request: dict[str, Any]) -> None:
        """The model a profile's transform job runs, made unless it is there already."""
        validate_input("CreateModel", request)
        try:
            self.models.get(request["ModelName"])
        except ValidationException:
            self.models.create(request)

    def _transform(self, name: str, profile: dict[str, Any]) -> bool:
        """Whether the profile's transform job has completed (it is started if it is not yet)."""
        try:
            job = self.transforms.describe(name)
        except ResourceNotFound:
            request = {"TransformJobName": name, "ModelName": name}
            request.update(profile["TransformJobDefinition"])
            validate_input("CreateTransformJob", request)
            self.transforms.create(request)
            return False
        if job["TransformJobStatus"] in ("Failed", "Stopped"):
            reason = job.get("FailureReason") or job["TransformJobStatus"].lower()
            raise ProfileFailed(f"the transform job {name} failed: {reason}")
        return bool(job["TransformJobStatus"] == "Completed")


class ProfileFailed(Exception):
    """A profile's job failed (never sent to a client: it becomes the profile's reason)."""
