"""A host's upload folders (a processing job's outputs), uploaded file by file (uncompressed) to
their S3Uri, from the host's own machine (its node on a Ray cluster).

The checkpoint machinery does the work: `Changes` / `push_changes` for the end of the job and
`CheckpointSync` while the code runs (S3UploadMode Continuous). Every folder is walked from the
host tree's handle, never through a link the code left: links are not uploaded, and an output
folder replaced by one is taken as empty (and said so in the log). A ledger per output, out of
the code's sight, names what is uploaded already: the end-of-job pass repeats none of the
continuous sync's work.
"""

from __future__ import annotations

import os

from openmaker.store import Location, StoreError, resolve
from openmaker.training.host.checkpoints.sync import CheckpointSync
from openmaker.training.host.checkpoints.transfer import Changes, Ledger, push_all
from openmaker.training.host.events import Emit
from openmaker.training.host.jobtree import HostTree, NotAFolder, say_ignored
from openmaker.training.host.layout import CONTAINER_ROOT
from openmaker.training.host.plan import FolderUpload
from openmaker.training.host.spec import HostSpec


def remote(spec: HostSpec, output: FolderUpload) -> Location:
    location = resolve(output.uri, spec.store)
    # An output URI names a folder: `s3://b/out` must not write `s3://b/out-old`'s neighbours.
    key = location.key if not location.key or location.key.endswith("/") else location.key + "/"
    return Location(location.store, key, output.uri)


def _ledger(spec: HostSpec, index: int) -> Ledger:
    return Ledger.of_path(spec.work_dir / f"output-ledger-{index}.json")


def start_continuous(spec: HostSpec, tree: HostTree, emit: Emit) -> list[CheckpointSync]:
    """Watch the Continuous outputs (before the code starts); stop them once it ends."""
    syncs = []
    for index, output in enumerate(spec.plan.uploads):
        if not output.continuous:
            continue
        folder = spec.ml_dir / output.folder

        def opener(output: FolderUpload = output) -> int:
            return tree.open(output.folder)

        try:
            sync = CheckpointSync(folder, remote(spec, output), _ledger(spec, index), emit, opener)
        except (OSError, StoreError, ValueError):
            continue  # the end-of-job upload still writes it all
        sync.thread.start()
        syncs.append(sync)
    return syncs


def upload_folders(spec: HostSpec, tree: HostTree, emit: Emit) -> None:
    """Upload what each output folder holds and the continuous sync has not (StoreError,
    OSError when it cannot)."""
    for index, output in enumerate(spec.plan.uploads):
        try:
            folder: int | None = tree.open(output.folder)
        except FileNotFoundError:
            folder = None
        except NotAFolder as exc:
            consequence = f"output {output.name!r} is taken as empty: nothing is uploaded from it"
            say_ignored(spec, emit, CONTAINER_ROOT, output.folder, exc, consequence)
            folder = None
        try:
            ledger = _ledger(spec, index)
            changes = Changes(folder, ledger, None)
            if not changes.uploads:
                continue
            # Only uploads: a file the code removed stays where a Continuous sync put it.
            changes.deletes = []
            push_all(changes, remote(spec, output), ledger, emit)
        finally:
            if folder is not None:
                os.close(folder)
