"""What the image tests need, all real and offline: a Docker registry on loopback (Debian's
`docker-registry`, htpasswd auth, plain HTTP, its access log kept), and images built without
Docker — `umoci` over busybox-static, pushed with `skopeo` — or written blob by blob where an
image must be one no tool would build (hostile layers, zstd layers).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import random
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

USER, PASSWORD = "tester", "s3cret-pass"
# Applets the test images link to busybox.
APPLETS = ("sh", "id", "cat", "pwd", "echo", "grep", "ls", "touch", "env", "sleep", "stat")
TOOLS = ("skopeo", "umoci", "docker-registry", "busybox", "htpasswd", "zstd")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    log: Path
    auth_file: Path

    def blob_fetches(self, digest: str) -> int:
        """How many times the registry served the blob `digest` (GET, not HEAD)."""
        text = self.log.read_text(errors="replace")
        return sum(
            1 for line in text.splitlines() if "GET /v2/" in line and f"/blobs/{digest}" in line
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_registry(
    folder: Path, address: str = "127.0.0.1", port: int | None = None, user: str = USER
) -> Iterator[Registry]:
    """The registry on `address`:`port` (a free port when None; `host` leaves out :80),
    `user` with PASSWORD its one login."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    htpasswd = subprocess.run(
        ["htpasswd", "-Bbn", user, PASSWORD], capture_output=True, text=True, check=True
    ).stdout
    (folder / "htpasswd").write_text(htpasswd)
    config = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(folder / "data")}},
        "http": {"addr": f"{address}:{port}"},
        "auth": {"htpasswd": {"realm": "test", "path": str(folder / "htpasswd")}},
    }
    (folder / "config.yml").write_text(json.dumps(config))  # YAML reads JSON
    log = folder / "registry.log"
    host = address if port == 80 else f"{address}:{port}"
    auth_file = folder / "auth.json"
    write_auth_file(auth_file, host, user, PASSWORD)
    with open(log, "wb") as out:
        server = subprocess.Popen(
            ["docker-registry", "serve", str(folder / "config.yml")], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while not _answers(host):
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the registry did not start"
            time.sleep(0.05)
        yield Registry(host, log, auth_file)
    finally:
        server.terminate()
        server.wait(10)


def _answers(host: str) -> bool:
    try:
        urllib.request.urlopen(f"http://{host}/v2/", timeout=2)
    except urllib.error.HTTPError:
        return True  # 401: up, and asking for credentials
    except OSError:
        return False
    return True


def write_auth_file(path: Path, host: str, user: str, password: str) -> None:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))


def umoci(*args: str) -> None:
    subprocess.run(["umoci", "--log", "error", *args], check=True, capture_output=True)


def busybox_image(
    layout: Path,
    tag: str,
    *,
    files: dict[str, str] | None = None,
    base: str | None = None,
    config: tuple[str, ...] = (),
) -> None:
    """The image `layout:tag`: busybox-static (or the image `base` of the layout) plus
    `files`, with umoci's `config` options (`--config.entrypoint=…`)."""
    bundle = layout.parent / f"bundle-{tag}"
    shutil.rmtree(bundle, ignore_errors=True)
    if not (layout / "index.json").exists():
        umoci("init", "--layout", str(layout))
    if base is None:
        umoci("new", "--image", f"{layout}:{tag}")
        umoci("unpack", "--image", f"{layout}:{tag}", str(bundle))
        root = bundle / "rootfs"
        (root / "bin").mkdir(parents=True)
        shutil.copy("/bin/busybox", root / "bin" / "busybox")
        for applet in APPLETS:
            (root / "bin" / applet).symlink_to("busybox")
        (root / "etc").mkdir()
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc" / "group").write_text("root:x:0:\n")
    else:
        umoci("unpack", "--image", f"{layout}:{base}", str(bundle))
    for relative, text in (files or {}).items():
        target = bundle / "rootfs" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    umoci("repack", "--image", f"{layout}:{tag}", str(bundle))
    if config:
        umoci("config", "--image", f"{layout}:{tag}", *config)
    shutil.rmtree(bundle)


def push(layout: Path, tag: str, registry: Registry, repository: str) -> None:
    subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", f"--dest-authfile={registry.auth_file}",
         f"oci:{layout}:{tag}", f"docker://{registry.host}/{repository}"],
        check=True, capture_output=True,
    )  # fmt: skip


def layer_digests(layout: Path, tag: str) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    digest = next(
        m["digest"]
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == tag
    )
    manifest = json.loads((layout / "blobs" / "sha256" / digest[7:]).read_text())
    return [layer["digest"] for layer in manifest["layers"]]


# Written blob by blob: images no tool would make.


def tar_layer(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def file_member(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def link_member(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


def dir_member(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, None


def raw_image(
    layout: Path, tag: str, layers: list[bytes], compression: str, config: dict[str, object]
) -> None:
    """An image of the layout `layout` (made if missing) from uncompressed layer tars,
    compressed with "gzip" or "zstd"."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    if not (layout / "oci-layout").exists():
        (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (layout / "index.json").write_text('{"schemaVersion":2,"manifests":[]}')

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    descriptors, diff_ids = [], []
    for layer in layers:
        diff_ids.append(f"sha256:{hashlib.sha256(layer).hexdigest()}")
        if compression == "zstd":
            packed = subprocess.run(["zstd", "-q", "-c"], input=layer, capture_output=True)
            data = packed.stdout
        else:
            data = gzip.compress(layer)
        kind = f"application/vnd.oci.image.layer.v1.tar+{compression}"
        descriptors.append({"mediaType": kind, "digest": put(data), "size": len(data)})
    image_config = {
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }  # fmt: skip
    config_data = json.dumps(image_config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": put(config_data),
            "size": len(config_data),
        },
        "layers": descriptors,
    }
    manifest_data = json.dumps(manifest).encode()
    index = json.loads((layout / "index.json").read_text())
    index["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": put(manifest_data),
            "size": len(manifest_data),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    (layout / "index.json").write_text(json.dumps(index))


def busybox_layer() -> bytes:
    """A layer with busybox-static and its applets, as raw_image takes it."""
    members = [dir_member("bin"), file_member("bin/busybox", Path("/bin/busybox").read_bytes(),
                                               0o755)]  # fmt: skip
    members += [link_member(f"bin/{applet}", "busybox") for applet in APPLETS]
    return tar_layer(members)


# Stand-ins for what cannot exist here: ECR's API and its registry's name, a slow registry.


class EcrStandIn:
    """ECR's JSON API on loopback, answering GetAuthorizationToken with `AWS:password` (its
    end `expires_in` seconds away) or, when `deny` is set, AccessDeniedException; `calls`
    counts the token requests."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.expires_in = 12 * 3600.0
        self.deny = False
        self.calls = 0
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target", "")
                status, body = stand_in.answer(target)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, target: str) -> tuple[int, dict[str, object]]:
        if not target.endswith(".GetAuthorizationToken"):
            return 400, {"__type": "UnknownOperationException", "message": target}
        self.calls += 1
        if self.deny:
            message = "User is not authorized to perform: ecr:GetAuthorizationToken"
            return 400, {"__type": "AccessDeniedException", "message": message}
        token = base64.b64encode(f"AWS:{self.password}".encode()).decode()
        data = {"authorizationToken": token, "expiresAt": time.time() + self.expires_in}
        return 200, {"authorizationData": [data]}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def skopeo_with_hosts(bin_dir: Path, hosts: str) -> None:
    """A `skopeo` in `bin_dir` that runs the real one with `hosts` as its /etc/hosts (in a
    mount namespace of its own): how an ECR host name reaches a registry on loopback. Its
    command lines go to `bin_dir/argv.log`."""
    real = next(
        Path(folder) / "skopeo"
        for folder in os.environ["PATH"].split(":")
        if (Path(folder) / "skopeo").is_file() and Path(folder) != bin_dir
    )
    (bin_dir / "hosts").write_text(hosts)
    shim = bin_dir / "skopeo"
    inner = f'mount --bind {bin_dir}/hosts /etc/hosts && exec {real} "$@"'
    shim.write_text(
        f'#!/bin/sh\necho "$*" >> {bin_dir}/argv.log\n'
        f"exec unshare --mount sh -c '{inner}' skopeo \"$@\"\n"
    )
    shim.chmod(0o755)


def loopback_address() -> str:
    """An address of the loopback network nobody else here is likely to use."""
    return f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"


class StallingProxy:
    """A registry's front on loopback that passes everything through, except that a layer's
    download (a blob GET) stops after its first kilobytes: a pull through it lasts until it
    is stopped, with a blob half-written. `stalled` is set once a download hangs."""

    def __init__(self, upstream: str, passed: int = 4096) -> None:
        self.upstream = upstream.rsplit(":", 1)
        self.passed = passed
        self.stalled = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection((self.upstream[0], int(self.upstream[1])))
            blob = threading.Event()  # a blob was asked for on this connection
            threading.Thread(
                target=self._requests, args=(client, server, blob), daemon=True
            ).start()
            threading.Thread(target=self._answers, args=(server, client, blob), daemon=True).start()

    def _requests(
        self, client: socket.socket, server: socket.socket, blob: threading.Event
    ) -> None:
        while data := _receive(client):
            if b"GET /v2/" in data and b"/blobs/sha256:" in data:
                blob.set()
            try:
                server.sendall(data)
            except OSError:
                return
        server.close()

    def _answers(self, server: socket.socket, client: socket.socket, blob: threading.Event) -> None:
        sent = 0
        while data := _receive(server):
            if blob.is_set():
                data = data[: max(0, self.passed - sent)]
                sent += len(data)
            try:
                client.sendall(data)
            except OSError:
                return
            if blob.is_set() and sent >= self.passed:
                self.stalled.set()
                self.closed.wait()  # held: the rest of the blob never comes
                return
        client.close()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


def _receive(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""
