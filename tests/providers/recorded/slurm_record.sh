#!/usr/bin/env bash
# Re-record the Slurm outputs that tests/providers/test_slurm.py parses, from the real cluster
# of tests/infra/slurm.sh (Slurm 22.05, no slurmdbd).  Run as root with the cluster up and
# idle; it takes about 90 s because a job must reach its time limit (limits count in minutes).
#   bash tests/providers/recorded/slurm_record.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
cd "$work"

sbatch --parsable --wrap 'true' >"$here/slurm_sbatch_parsable.txt"
done_id="$(cat "$here/slurm_sbatch_parsable.txt")"
failed="$(sbatch --parsable --wrap 'echo to stderr >&2; exit 3')"
timeout_id="$(sbatch --parsable --time=1 --wrap 'sleep 600')"
running="$(sbatch --parsable --wrap 'sleep 600')"
killed="$(sbatch --parsable --wrap 'sleep 600')"
pending="$(sbatch --parsable --ntasks=2 --wrap 'sleep 600')"
held="$(sbatch --parsable --hold --wrap 'true')"
ids="$done_id,$failed,$timeout_id,$running,$killed,$pending,$held"
# Wait for the time limit to strike, then cancel one running job so both ends are listed.
while [ "$(squeue --noheader --states=all --jobs="$timeout_id" --format=%T)" != TIMEOUT ]; do sleep 2; done
scancel "$killed"
while [ "$(squeue --noheader --states=all --jobs="$killed" --format=%T)" != CANCELLED ]; do sleep 0.2; done

squeue --noheader --states=all --jobs="$ids" --Format='JobID:|,State:|,Reason:|,exit_code:|' \
    >"$here/slurm_squeue_states.txt"
squeue --noheader --states=all --jobs="$ids" --format='%i %t %T %r' >"$here/slurm_squeue_short.txt"
{ squeue --noheader --jobs=999999 2>&1; echo "exit code: $?"; } >"$here/slurm_squeue_invalid.txt" || true
{ sacct --noheader --parsable2 --allocations --jobs="$ids" --format=JobID,State,ExitCode 2>&1; echo "exit code: $?"; } \
    >"$here/slurm_sacct_disabled.txt" || true
sacct --noheader --parsable2 --allocations --jobs="$ids" --format=JobID,State,ExitCode --completion \
    >"$here/slurm_sacct_completion.txt"

scancel "$running" "$pending" "$held"
{ scancel "$done_id" 999999 2>&1; echo "exit code: $?"; } >"$here/slurm_scancel_finished.txt" || true
rm -rf "$work"
echo "recorded: done=$done_id failed=$failed timeout=$timeout_id running=$running cancelled=$killed pending=$pending held=$held"
