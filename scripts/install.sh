#!/usr/bin/env bash
# Installs what openmaker needs on a fresh Debian machine: the sandbox and FUSE tools from
# Debian, and openmaker with its Python dependencies in ./.venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"

missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v unshare >/dev/null || missing+=(util-linux)
# Each host's volume: a loop-mounted ext4 image.
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v losetup >/dev/null || missing+=(mount)
# Each host's own network (runtime/network.py) speaks rtnetlink itself; the tests compare what
# it makes with what `ip` shows and makes.
command -v ip >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)
# The tests of the hosts' networks: iptables' FORWARD dropping by default (as with Docker), a
# resolver on loopback (tests/test_network_paths.py).
command -v iptables >/dev/null || missing+=(iptables)
command -v dnsmasq >/dev/null || missing+=(dnsmasq-base)
# Distributed jobs: mpirun (OpenMPI) over ssh between a job's hosts.
command -v mpirun >/dev/null || missing+=(openmpi-bin)
command -v ssh >/dev/null || missing+=(openssh-client)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
# Container images without a daemon (openmaker/runtime/images): skopeo pulls, umoci unpacks,
# zstd decompresses zstd layers; the tests run a docker-registry with htpasswd auth
# (apache2-utils) and build images from busybox-static.
command -v skopeo >/dev/null || missing+=(skopeo)
command -v umoci >/dev/null || missing+=(umoci)
command -v zstd >/dev/null || missing+=(zstd)
if [ "$extra" = test ]; then
    command -v docker-registry >/dev/null || missing+=(docker-registry)
    command -v htpasswd >/dev/null || missing+=(apache2-utils)
    dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
fi
# InvokeEndpoint's lane (openmaker/api/_lane.c) is compiled as openmaker installs: a C compiler,
# OpenSSL's headers (SigV4) and Python's.
command -v cc >/dev/null || missing+=(gcc libc6-dev)
[ -f /usr/include/openssl/hmac.h ] || missing+=(libssl-dev)
python3 -c 'import os, sysconfig; assert os.path.exists(os.path.join(
    sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null || missing+=(python3-dev)
# Debian's own python3 needs python3-venv (and ensurepip) to make a virtual environment.
python3 -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
# The web console's tests look at its pages in Debian's headless chromium (tests/browser.py).
if [ "$extra" = test ] && ! command -v chromium >/dev/null; then
    missing+=(chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing system packages: ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# The tests also drive the sagemaker SDK v3, which cannot share an environment with v2 (the
# test extra's): a second one, .venv-sdk3, holds openmaker (its botocore plugin, `openmaker env`)
# and the v3 SDK pinned by the `sdk3` extra, as a user's notebook environment would. The SDK is
# installed in the background while the main environment is (about 2.5 minutes on a fresh
# 2-core machine with pip's cache warm; --no-compile saves a third of that: the few modules the
# tests import are compiled when first imported); openmaker itself joins it afterwards, as two
# builds of the one source folder at once would share its build files.
sdk3_pid=""
if [ "$extra" = test ]; then
    [ -x .venv-sdk3/bin/python ] || python3 -m venv .venv-sdk3
    sdk3_requirements=$(python3 -c 'import tomllib; print("\n".join(tomllib.load(open(
        "pyproject.toml", "rb"))["project"]["optional-dependencies"]["sdk3"]))')
    # shellcheck disable=SC2086 # one requirement a word
    .venv-sdk3/bin/python -m pip install -q --no-compile --disable-pip-version-check \
        $sdk3_requirements &
    sdk3_pid=$!
fi
spec="."
[ -n "$extra" ] && spec=".[${extra}]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
if [ -n "$sdk3_pid" ]; then
    wait "$sdk3_pid" || { echo "installing the sagemaker SDK v3 into .venv-sdk3 failed" >&2; exit 1; }
    .venv-sdk3/bin/python -m pip install -q --no-compile --disable-pip-version-check -e ".[sdk3]"
fi
