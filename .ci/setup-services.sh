#!/usr/bin/env bash
# Install the system programs that the staging tests' fixtures start on loopback: sshd and the
# ssh client (for rsync over ssh) and rsync.  The fixtures start and stop the servers themselves;
# pyftpdlib comes with the [test] extra.  Idempotent: does nothing when all are present.
set -euo pipefail

PACKAGES=(openssh-server openssh-client rsync)
if [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null && command -v ssh-keygen >/dev/null \
    && command -v rsync >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup-services: installing ${PACKAGES[*]} needs root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# The system sshd (port 22) is neither configured nor used: the fixtures run their own on a free port.
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
