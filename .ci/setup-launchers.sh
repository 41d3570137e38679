#!/usr/bin/env bash
# Install the programs the launcher tests run for real: Open MPI and MPICH (mpiexec/mpirun) and
# GNU parallel, from Debian.  Idempotent: installs only the packages that are missing.  Waits for
# another apt/dpkg run to release its lock rather than failing.
set -euo pipefail

PACKAGES=(openmpi-bin libopenmpi-dev mpich libmpich-dev parallel)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "setup-launchers: installing ${missing[*]} needs root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt_install() { apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@"; }
apt_install "${missing[@]}" || { apt-get -o DPkg::Lock::Timeout=600 update -qq && apt_install "${missing[@]}"; }
# parallel prints a citation notice unless told it was seen; the launcher passes --will-cite too.
mkdir -p "$HOME/.parallel" && touch "$HOME/.parallel/will-cite"
