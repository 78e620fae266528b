"""File-mode channels of the embedded store are shown as copy-on-write views, not copied: the job
may change its input files, the store does not change, and the view holds what a copy would."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.helpers import get_object, log_text, put_objects, run_script, unique_name

OBJECTS = {f"s3://views/data/part-{i}": f"object {i}\n".encode() for i in range(3)}


def _store_files(home: Path) -> dict[str, bytes]:
    folder = home / "s3" / "views"
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def test_the_job_writes_to_its_input_and_the_store_does_not_change(
    tmp_path: Path, home: Path
) -> None:
    put_objects({**OBJECTS, "s3://views/elsewhere/secret": b"not this channel's\n"})
    before = _store_files(home)
    name = unique_name("view-write")
    script = (
        f"#!{sys.executable}\n"
        "import os, pathlib\n"
        "data = pathlib.Path('/opt/ml/input/data/train')\n"
        "print('files', sorted(p.name for p in data.iterdir()))\n"
        "with open(data / 'part-0', 'a') as f:\n"
        "    f.write('changed by the job\\n')\n"
        "print('read back', (data / 'part-0').read_text().splitlines())\n"
        "(data / 'part-1').unlink()\n"
        "(data / 'new').write_text('made by the job\\n')\n"
        # A link planted in the input folder, and writes through it: they stay in the sandbox.
        f"os.symlink({str(home / 's3' / 'views' / 'data' / 'part-2')!r}, data / 'planted')\n"
        "try:\n"
        "    (data / 'planted').write_text('through the link\\n')\n"
        "except OSError as exc:\n"
        "    print('link write refused', exc.errno)\n"
        "mounts = pathlib.Path('/proc/self/mountinfo').read_text().splitlines()\n"
        "print('view', [m.split(' - ')[1] for m in mounts if ' /opt/ml/input/data/train ' in m])\n"
    )
    jobs, description = run_script(
        tmp_path, name, script, "s3://out/o", {"train": "s3://views/data/"}
    )
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    log = log_text(jobs, name)
    assert "files ['part-0', 'part-1', 'part-2']" in log
    assert "read back ['object 0', 'changed by the job']" in log
    # Shown through an overlay whose options name no folder of openmaker's.
    view = next(line for line in log.splitlines() if line.startswith("view"))
    assert "overlay" in view and str(home) not in view
    assert _store_files(home) == before
    assert get_object("s3://views/data/part-0") == b"object 0\n"


def test_a_string_prefix_shows_only_its_objects(tmp_path: Path, home: Path) -> None:
    put_objects({**OBJECTS, "s3://views/data/other": b"x", "s3://views/data/sub/part-9": b"y"})
    name = unique_name("view-prefix")
    script = (
        "#!/bin/sh\n"
        "cd /opt/ml/input/data/train && find . | sort | tr '\\n' ' '\n"
        "grep -q 'object 2' part-2 && echo content-ok\n"
    )
    jobs, description = run_script(
        tmp_path, name, script, "s3://out/o", {"train": "s3://views/data/part-"}
    )
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    log = log_text(jobs, name)
    assert ". ./part-0 ./part-1 ./part-2 " in log
    assert "content-ok" in log
