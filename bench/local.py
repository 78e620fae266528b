"""File mode from this machine's own store: openmaker's channel (a copy-on-write view of the
embedded store's folder, channels/local_view.py) against `cp -al` of the same folder, the
cheapest a copy can be (links, no bytes)."""

from __future__ import annotations

import os
import subprocess
from functools import partial
from pathlib import Path

from bench.download import (
    DataSet,
    KiB,
    bench_spec,
    expectation,
    ignore_event,
    make_local,
    verify,
)
from bench.stats import Timings, timed
from openmaker.training.host.channels.download import download_channels
from openmaker.training.host.volume import unmount_under

TARGET_RATIO = 2.0  # openmaker within 2x of `cp -al`
BUCKET = "local"


def run(quick: bool, scratch: Path) -> list[str]:
    data = DataSet(200 if quick else 2000, 64 * KiB)
    runs = 3 if quick else 5
    print(f"File mode from the embedded store, {data.label} ({runs} runs)", flush=True)
    home = scratch / "local-home"
    folder = home / "s3" / BUCKET / data.prefix
    make_local(data, folder)
    expected = expectation(folder)
    # The embedded store: no S3 server named.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    environ["OPENMAKER_HOME"] = str(home)
    uri = f"s3://{BUCKET}/{data.prefix}"
    seconds: dict[str, list[float]] = {"openmaker": [], "cp -al": []}
    for index in range(runs):
        os.sync()
        work = scratch / f"local-openmaker-{index}"
        spec = bench_spec(uri, work, {}, "File", environ)
        try:
            _, took = timed(partial(download_channels, spec, ignore_event))
            verify("openmaker", spec.ml_dir / "input" / "data" / "train", expected)
        finally:
            unmount_under(work)
        seconds["openmaker"].append(took)
        os.sync()
        target = scratch / f"local-cp-{index}"
        copy = ["cp", "-al", str(folder), str(target)]
        _, took = timed(partial(subprocess.run, copy, check=True))
        verify("cp -al", target, expected)
        seconds["cp -al"].append(took)
        print(
            f"  run {index + 1}/{runs}: openmaker {seconds['openmaker'][-1]:.3f} s, "
            f"cp -al {took:.3f} s",
            flush=True,
        )
    om, cp = Timings(seconds["openmaker"]), Timings(seconds["cp -al"])
    ratio = om.median / cp.median
    verdict = "ok" if ratio <= TARGET_RATIO else "MISSED"
    return [
        f"File {data.label} from the embedded store: openmaker {om.median:.3f} s, cp -al "
        f"{cp.median:.3f} s, {ratio:.2f}x (target <= {TARGET_RATIO:.0f}x: {verdict})",
        f"  openmaker {om.describe()}",
        f"  cp -al    {cp.describe()}",
    ]
