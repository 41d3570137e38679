#!/usr/bin/env bash
# Install what the Slurm, PBS/Torque and srun tests need: munge, slurmctld, slurmd and
# slurm-client from Debian (--no-install-recommends), plus slurm-wlm-torque's qsub/qstat/qdel
# unpacked beside them.  The tests' session fixture starts and stops the daemons itself
# (tests/infra/slurm.sh start|stop).  Idempotent: does nothing when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash tests/infra/slurm.sh install
