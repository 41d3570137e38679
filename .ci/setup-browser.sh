#!/usr/bin/env bash
# Install Debian's headless-capable Chromium, which the dashboard tests drive
# (tests/monitor/test_dashboard.py).  Idempotent; waits for another apt/dpkg run's lock.
set -euo pipefail

PACKAGES=(chromium)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "setup-browser: installing ${missing[*]} needs root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt_install() { apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@"; }
apt_install "${missing[@]}" || { apt-get -o DPkg::Lock::Timeout=600 update -qq && apt_install "${missing[@]}"; }
