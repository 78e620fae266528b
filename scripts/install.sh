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
# Distributed jobs: mpirun (OpenMPI) over ssh between a job's hosts.
command -v mpirun >/dev/null || missing+=(openmpi-bin)
command -v ssh >/dev/null || missing+=(openssh-client)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
# Debian's own python3 needs python3-venv (and ensurepip) to make a virtual environment.
python3 -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
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
spec="."
[ -n "$extra" ] && spec=".[${extra}]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
