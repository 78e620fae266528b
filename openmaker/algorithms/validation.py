"""An algorithm's validation: each of its `ValidationProfiles` runs its `TrainingJobDefinition`
as a real training job with the algorithm, then (when the profile has one) its
`TransformJobDefinition` as a batch transform job on the model that job trained, served by the
algorithm's first inference container.

Everything is kept in the database: a profile's step and its jobs' names, which are derived from
the algorithm (`<algorithm>-v<profile number>-<8 hex digits of its ARN and creation time>`, the
name of the training job, of the model and of the transform job alike). `advance` moves every
profile on as far as its jobs have gone; it is idempotent, so the server's background sweep and
DescribeAlgorithm may both call it, and after a restart it picks up where it was (a job it was
about to create and did not is created then).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from openmaker.algorithms import service
from openmaker.algorithms.service import Algorithms
from openmaker.jobs.db import AlgorithmRecord
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


def job_name(algorithm: AlgorithmRecord, index: int) -> str:
    """The name of profile `index`'s (from 1) training job, model and transform job."""
    seed = f"{algorithm.arn} {algorithm.creation_time.isoformat()}".encode()
    return f"{algorithm.name[:44]}-v{index}-{hashlib.sha256(seed).hexdigest()[:8]}"


class Validation:
    def __init__(
        self,
        algorithms: Algorithms,
        jobs: TrainingJobs,
        models: Models,
        transforms: TransformJobs,
    ) -> None:
        self.algorithms, self.jobs = algorithms, jobs
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
        for name in self.algorithms.validating():
            try:
                self.advance(name)
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
            ended = all(s["Status"] in (COMPLETED, FAILED) for s in statuses)
            failed = any(s["Status"] == FAILED for s in statuses)
            overall = service.IN_PROGRESS
            if ended:
                overall = service.FAILED if failed else service.COMPLETED
            if statuses != algorithm.validation or overall != algorithm.status:
                self.algorithms.record_validation(algorithm.name, overall, statuses)

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
                self._model(algorithm, name, artifacts)
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

    def _model(self, algorithm: AlgorithmRecord, name: str, artifacts: str) -> None:
        """The model the profile's transform job runs: the algorithm's first inference
        container over what the training job made."""
        container = dict(algorithm.request["InferenceSpecification"]["Containers"][0])
        request = {
            "ModelName": name,
            "PrimaryContainer": {
                **{k: v for k, v in container.items() if k in ("Image", "Environment")},
                "ModelDataUrl": artifacts,
            },
            "ExecutionRoleArn": algorithm.request["ValidationSpecification"]["ValidationRole"],
        }
        validate_input("CreateModel", request)
        try:
            self.models.get(name)
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
