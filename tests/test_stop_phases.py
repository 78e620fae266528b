"""A stop ends the job Stopped whatever phase it comes in, and names only artifacts that exist."""

from __future__ import annotations

from pathlib import Path

from openmaker.training.service import TrainingJobs
from tests.helpers import get_object, make_image, request, wait_for, wait_for_secondary_status


def test_a_stop_while_the_outputs_upload_ends_stopped(tmp_path: Path, home: Path) -> None:
    # Random bytes do not compress: packing 160 MiB keeps the job in Uploading for seconds.
    script = "#!/bin/sh\nhead -c 167772160 /dev/urandom > /opt/ml/model/weights.bin\necho trained\n"
    image = make_image(tmp_path / "image", script)
    jobs = TrainingJobs()
    jobs.create(request("stop-uploading", str(image), "s3://b/out"))
    wait_for_secondary_status(jobs, "stop-uploading", "Uploading")
    jobs.stop("stop-uploading")
    description = wait_for(jobs, "stop-uploading")
    assert description["TrainingJobStatus"] == "Stopped", description
    assert description["SecondaryStatus"] == "Stopped"
    # What the code wrote is kept, as on SageMaker, and named.
    model = description["ModelArtifacts"]["S3ModelArtifacts"]
    assert model.endswith("/stop-uploading/output/model.tar.gz")
    assert len(get_object(model)) > 160 * 1024 * 1024
