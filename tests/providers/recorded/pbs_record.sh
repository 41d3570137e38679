#!/usr/bin/env bash
# Re-record the outputs of slurm-wlm-torque's qsub/qstat/qdel (the PBS commands on top of
# the real Slurm cluster of tests/infra/slurm.sh) that tests/providers/test_pbs.py parses.
# Run as root with the cluster up and idle; takes about 10 s.
#   bash tests/providers/recorded/pbs_record.sh
# The pbs_pro_* and pbs_torque_server_* files are not recorded here (no PBS Pro or Torque
# server can be installed on Debian 12); test_pbs.py says what they follow.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PATH="${TORQUE_BIN:-/opt/hpcfutures-torque/bin}:$PATH"
work="$(mktemp -d)"
cd "$work"
printf '#!/bin/bash\n#PBS -N quick\n#PBS -l nodes=1:ppn=1\ntrue\n' >quick.sh
printf '#!/bin/bash\n#PBS -N sleeper\n#PBS -l nodes=1:ppn=1,walltime=00:05:00\nexec sleep 600\n' >sleeper.sh
printf '#!/bin/bash\n#PBS -N waiter\n#PBS -l nodes=1:ppn=2\ntrue\n' >waiter.sh

qsub -o quick.out -e quick.err quick.sh >"$here/pbs_emulation_qsub.txt"
done_id="$(cat "$here/pbs_emulation_qsub.txt")"
running="$(qsub -o s.out -e s.err sleeper.sh)"
pending="$(qsub -o w.out -e w.err waiter.sh)"
while [ "$(squeue --noheader --states=all --jobs="$done_id,$running" --format=%T | sort | tr '\n' ' ')" != "COMPLETED RUNNING " ]; do
    sleep 0.2
done
qstat "$done_id" "$running" "$pending" >"$here/pbs_emulation_qstat_table.txt"
qstat -f "$done_id" "$running" "$pending" >"$here/pbs_emulation_qstat_full.txt"
{ qstat -f 999999 2>&1; echo "exit code: $?"; } >"$here/pbs_emulation_qstat_unknown.txt" || true
{ qstat -f -x "$done_id" 2>&1; echo "exit code: $?"; } >"$here/pbs_emulation_qstat_x.txt" || true
qdel "$running" "$pending"
{ qdel "$done_id" 2>&1; echo "exit code: $?"; } >"$here/pbs_emulation_qdel_finished.txt" || true
rm -rf "$work"
echo "recorded: completed=$done_id running=$running pending=$pending"
