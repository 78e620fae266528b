"""How a job's hosts on the Ray cluster reach the object store: through the server's S3 gate.

A host on the server's machine reads the embedded store's folder directly; a node has no such
folder (or another machine's home). So under Ray the host's own transfers (channels, the source
code, checkpoints, outputs) go through the gate, the S3 endpoint `openmaker server` serves at the
address it advertises, with a key of the job's own minted for its hosts
(openmaker/jobs/gate_keys.py): the same kind of record as the code's key, revoked with the job,
refused by the gate's front (openmaker/api/s3_policy.py) outside its places.

The hosts' key is wider than the code's in two ways, both things openmaker itself fetches for the
job: the script-mode source tarball (`sagemaker_submit_directory`), and for a manifest channel
the whole bucket of the manifest (a manifest may name any object of its own bucket, see
store/manifest.py `check_reference`, so the job reaches those anyway). It reaches nothing of
another job's unless the request names it.

Without a gate (a job the CLI runs with no server) the hosts keep reading the store as the server
would: the embedded store's folder, which every node then needs at the same path, or the S3
server in use with openmaker's own credentials.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from openmaker.jobs import gate_keys
from openmaker.jobs.gate_keys import Place
from openmaker.settings import Settings
from openmaker.shapes.locations import submit_directory
from openmaker.store.location import S3Endpoint, StoreSettings, split_s3_uri
from openmaker.training.host.spec import HostSpec

# A channel whose URI names a manifest (the plan's DataType values), not the data.
MANIFESTS = ("ManifestFile", "AugmentedManifestFile")
# The record's holder (gate_keys.mint): the hosts', not the code's.
HOLDER = "hosts"
# The hosts' store folder: none (a transfer that still took a folder would find nothing).
NO_FOLDER = Path("/nonexistent/openmaker-store")


def host_places(spec: HostSpec) -> list[Place]:
    """What the job's hosts transfer: channels and the source tarball (read), the job's output
    folder, its upload folders and its checkpoints (read-write)."""
    plan, found = spec.plan, []
    for channel in plan.channels:
        if channel.data_type in MANIFESTS:
            bucket, _ = split_s3_uri(channel.uri) if channel.uri.startswith("s3://") else ("", "")
            if bucket:
                found.append(Place(f"s3://{bucket}/", is_folder=True, write=False))
            continue
        found.append(Place(channel.uri, is_folder=False, write=False))
    source = submit_directory(plan.command.hyperparameters)
    if source is not None and source.startswith("s3://"):
        found.append(Place(source, is_folder=False, write=False))
    found.append(Place(plan.output.prefix, is_folder=True, write=True))
    # A processing job's outputs, uploaded by each host (host/folder_uploads.py).
    found.extend(Place(upload.uri, is_folder=True, write=True) for upload in plan.uploads)
    if plan.checkpoint is not None:
        found.append(Place(plan.checkpoint.uri, is_folder=True, write=True))
    return found


def through_the_gate(settings: Settings, specs: list[HostSpec]) -> list[HostSpec]:
    """The specs with the store reached through the server's gate with a new key of the job's
    hosts; unchanged without a gate."""
    gate = settings.store.gate_url
    if not gate or not specs:
        return specs
    places = [place for spec in specs for place in host_places(spec)]
    key = gate_keys.mint(
        settings.home,
        specs[0].job_key or specs[0].job_name,  # revoked by the job's key (its kind's)
        places,
        settings.store.endpoint,
        settings.store.retry_seconds,
        holder=HOLDER,
    )
    endpoint = S3Endpoint(gate, key.access_key_id, key.secret_access_key, None, settings.region)
    store = StoreSettings(
        embedded_dir=NO_FOLDER, endpoint=endpoint, retry_seconds=settings.store.retry_seconds
    )
    return [
        dataclasses.replace(spec, settings=dataclasses.replace(spec.settings, store=store))
        for spec in specs
    ]
