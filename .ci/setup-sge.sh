#!/usr/bin/env bash
# Install Son of Grid Engine (Debian's gridengine-master, -exec and -client) for the
# GridEngineProvider tests, without questions: debconf is told that this host is the master
# and that the postinst should create the "default" cell.  The daemons are not started here;
# tests/infra/sge.sh starts and stops them.  Idempotent: does nothing when SGE is installed.
#
# Debian's gridengine-client and slurm-wlm-torque both own /usr/bin/qsub; installing one
# removes the other, so PBS emulation must be unpacked elsewhere (not installed) next to SGE.
set -euo pipefail

PACKAGES=(gridengine-master gridengine-exec gridengine-client)
if [ -x /usr/sbin/sge_qmaster ] && [ -x /usr/sbin/sge_execd ] && [ -x /usr/lib/gridengine/qsub ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup-sge: installing ${PACKAGES[*]} needs root" >&2
  exit 1
fi
host="$(hostname -s)"
for package in gridengine-common "${PACKAGES[@]}"; do
  debconf-set-selections <<ANSWERS
$package shared/gridengineconfig boolean true
$package shared/gridenginecell string default
$package shared/gridenginemaster string $host
ANSWERS
done
export DEBIAN_FRONTEND=noninteractive
# exim4 and tcsh come along as dependencies; policy-rc.d (or no init system) keeps exim stopped.
if ! apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
fi
