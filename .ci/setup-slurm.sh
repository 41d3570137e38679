#!/usr/bin/env bash
# Install what the Slurm, PBS/Torque and srun tests need: munge, slurmctld, slurmd and
# slurm-client from Debian (--no-install-recommends), plus slurm-wlm-torque's qsub/qstat/qdel
# unpacked beside them.  The tests' session fixture starts and stops the single-node cluster
# itself (tests/infra/slurm.sh start|stop).
#
# Then bring up a second, separate Slurm cluster on this machine, "hpcfnodes", whose one
# partition "multi" has two nodes, n1 and n2: one slurmd per node name (`slurmd -N n1`), both
# on 127.0.0.1 with ports of their own.  Debian builds slurmd with --enable-multiple-slurmd
# (`scontrol show config` says MULTIPLE_SLURMD = Yes), so SLURM_JOB_NODELIST, `srun
# --nodelist` and node counts are real there.  tests/providers/test_slurm_nodes.py uses it
# with SLURM_CONF=/etc/slurm-nodes/slurm.conf.  It shares nothing with the single-node
# cluster but the munge key: own config, ports, state, spool, pid and log files, and its own
# munged on its own socket (AuthInfo), so that stopping either cluster never breaks the other,
# and the single-node cluster, its default partition "debug" and its capacity stay as the
# tests expect.
#
#   setup-slurm.sh               install, then start the two-node cluster (what .ci/run runs)
#   setup-slurm.sh install       install only
#   setup-slurm.sh nodes-start   start the two-node cluster, or check it (restarted when its
#                                slurm.conf changed); waits until n1 and n2 take jobs
#   setup-slurm.sh nodes-stop    cancel its jobs and stop its slurmctld, slurmds and munged
#   setup-slurm.sh nodes-status  exit 0 when both nodes take jobs, 3 when a daemon is stopped
#
# Each fake node declares the whole machine, as `slurmd -C` reports it (2 CPUs on CI), so
# the two nodes share the real CPUs: a job on n1 and a job on n2 run on the same cores.
# slurmd loads PMIx only when it starts, and .ci/run installs MPI (libpmix) after this
# script: `srun --mpi=pmix` on this cluster would need nodes-stop then nodes-start.
# Idempotent: every command may run again, on a fresh machine or on a running cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES_CONF=/etc/slurm-nodes/slurm.conf
NODES=(n1 n2)
FIRST_PORT=17001                 # n1 listens on 17001, n2 on 17002
CTLD_PORT=6827                   # the single-node cluster uses 6817/6818
CTLD_PID=/run/slurmctld-nodes.pid
SPOOL=/var/spool/slurmd-nodes    # one directory per node below it (%n)
STATE=/var/spool/slurmctld-nodes
LOGS=/var/log/slurm
MUNGE_DIR=/run/munge-nodes      # this cluster's munged: socket and pidfile
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
MUNGE_PID=$MUNGE_DIR/munged.pid
READY_TIMEOUT="${SLURM_READY_TIMEOUT:-60}"
HOST="$(hostname -s)"

say() { echo "[setup-slurm] $*" >&2; }
die() { say "$*"; exit 1; }
# A pidfile may be stale or name a reused pid: check it is a live Slurm or munge daemon.
running() { local pid; [ -s "$1" ] && pid="$(cat "$1")" && kill -0 "$pid" 2>/dev/null \
  && grep -qE '^(slurm|munge)' "/proc/$pid/comm" 2>/dev/null && [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]; }
slurmd_pid() { echo "/run/slurmd-nodes-$1.pid"; }
# Every client command below talks to the two-node cluster, never to the single-node one.
nodes() { SLURM_CONF="$NODES_CONF" "$@"; }

# One start or stop at a time (test sessions side by side).  Daemons get "9>&-", or they
# would hold the lock for their lifetime.
lock() {
    exec 9>/run/hpcfutures-slurm-nodes.lock
    flock --timeout 600 9 || die "another setup-slurm.sh has held /run/hpcfutures-slurm-nodes.lock for 10 minutes"
}

render_conf() {
    local hardware last=$((FIRST_PORT + ${#NODES[@]} - 1))
    hardware="$(slurmd -C | head -n 1)"      # NodeName=vm CPUs=2 Boards=1 ... RealMemory=N
    hardware="${hardware#NodeName=* }"
    cat <<EOF
# Written by hpcfutures' .ci/setup-slurm.sh; rewritten on every start.  A second cluster
# beside tests/infra/slurm.sh's: two nodes, each its own slurmd (slurmd -N n1, -N n2).
ClusterName=hpcfnodes
SlurmctldHost=${HOST}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${FIRST_PORT}
AuthType=auth/munge
CredType=cred/munge
# This cluster's own munged (same key as the single-node cluster's, another socket).
AuthInfo=socket=${MUNGE_SOCKET}
SlurmUser=root
SlurmdUser=root
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation=${STATE}
SlurmdSpoolDir=${SPOOL}/%n
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=/run/slurmd-nodes-%n.pid
SlurmctldLogFile=${LOGS}/slurmctld-nodes.log
SlurmdLogFile=${LOGS}/slurmd-nodes-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=${LOGS}/jobcomp-nodes.log
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
# Job ids of this cluster start far from the single-node cluster's, so they are never mixed up.
FirstJobId=100000
# Every node is the whole machine (from slurmd -C): the nodes share its CPUs.
NodeName=n[1-${#NODES[@]}] NodeHostname=localhost NodeAddr=127.0.0.1 Port=${FIRST_PORT}-${last} ${hardware} State=UNKNOWN
PartitionName=multi Nodes=n[1-${#NODES[@]}] Default=YES MaxTime=INFINITE DefaultTime=00:10:00 State=UP OverSubscribe=NO
EOF
}

. tests/infra/daemon.sh  # stop_daemon (this script runs from the repository root)

start_munge() {  # a munged of our own: it refuses to run as root, so it runs as munge
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 "$MUNGE_DIR"
    # The package's postinst makes the key; make one only if it is missing.
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    if ! running "$MUNGE_PID"; then
        rm -f "$MUNGE_PID" "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
        say "starting munged on $MUNGE_SOCKET"
        runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_PID" \
            --log-file=/var/log/munge/munged-nodes.log --seed-file=/var/lib/munge/munged-nodes.seed 9>&-
    fi
    local _
    for _ in $(seq 100); do
        munge -S "$MUNGE_SOCKET" -n </dev/null 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munged on $MUNGE_SOCKET does not answer; see /var/log/munge/munged-nodes.log"
}

# "n1 idle" per line; nothing when the controller does not answer.
node_states() { nodes sinfo --noheader --Node --format='%N %t' 2>/dev/null || true; }

nodes_ready() {
    local states node
    states="$(node_states)"
    for node in "${NODES[@]}"; do
        grep -qE "^$node (idle|mix|alloc|comp)\$" <<<"$states" || return 1
    done
}

cmd_nodes_start() {
    [ "$(id -u)" = 0 ] || die "starting slurmctld and slurmd needs root"
    lock
    getent hosts "$HOST" >/dev/null || { say "adding $HOST to /etc/hosts"; echo "127.0.0.1 $HOST" >>/etc/hosts; }
    start_munge
    local new changed=0 node
    install -d -m 0755 "$(dirname "$NODES_CONF")" "$STATE" "$LOGS"
    for node in "${NODES[@]}"; do install -d -m 0755 "$SPOOL/$node"; done  # slurmd would log an error first
    new="$(mktemp)"
    render_conf >"$new"
    if ! cmp -s "$new" "$NODES_CONF"; then
        install -m 0644 "$new" "$NODES_CONF"
        changed=1
    fi
    rm -f "$new"
    if [ "$changed" = 1 ]; then
        say "$NODES_CONF written: (re)starting its daemons"   # reconfigure would not rebind ports
        for node in "${NODES[@]}"; do stop_daemon "slurmd -N $node" "$(slurmd_pid "$node")"; done
        stop_daemon "slurmctld (hpcfnodes)" "$CTLD_PID"
    fi
    if ! running "$CTLD_PID"; then
        say "starting slurmctld for n[1-${#NODES[@]}]"
        nodes slurmctld -f "$NODES_CONF" -i 9>&-
    fi
    for node in "${NODES[@]}"; do
        if ! running "$(slurmd_pid "$node")"; then
            say "starting slurmd -N $node"
            nodes slurmd -f "$NODES_CONF" -N "$node" 9>&-
        fi
    done
    local deadline=$((SECONDS + READY_TIMEOUT)) states=""
    while [ "$SECONDS" -lt "$deadline" ]; do
        if nodes_ready; then
            say "ready: partition multi, nodes ${NODES[*]} take jobs"
            return 0
        fi
        states="$(node_states)"
        for node in "${NODES[@]}"; do
            if grep -qE "^$node (down|drain|drng|fail)" <<<"$states"; then
                nodes scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
            fi
        done
        sleep 0.5
    done
    nodes sinfo --Node --long >&2 || true
    tail -n 20 "$LOGS/slurmctld-nodes.log" "$LOGS"/slurmd-nodes-*.log >&2 || true
    die "nodes ${NODES[*]} did not take jobs within ${READY_TIMEOUT}s (sinfo: ${states:-no answer})"
}

cmd_nodes_stop() {
    [ "$(id -u)" = 0 ] || die "stopping slurmctld and slurmd needs root"
    lock
    local ids _ node
    if running "$CTLD_PID"; then
        ids="$(nodes squeue --noheader --format=%i 2>/dev/null | tr '\n' ' ')"
        if [ -n "${ids// /}" ]; then
            say "cancelling jobs $ids"   # first, so that no slurmstepd outlives its slurmd
            # shellcheck disable=SC2086
            nodes scancel $ids 2>/dev/null || true
            for _ in $(seq 150); do
                [ -z "$(nodes squeue --noheader --format=%i 2>/dev/null)" ] && break
                sleep 0.1
            done
        fi
    fi
    for node in "${NODES[@]}"; do stop_daemon "slurmd -N $node" "$(slurmd_pid "$node")"; done
    stop_daemon "slurmctld (hpcfnodes)" "$CTLD_PID"
    stop_daemon "munged ($MUNGE_SOCKET)" "$MUNGE_PID"
}

cmd_nodes_status() {
    local node up=0
    running "$MUNGE_PID" || { echo "munged ($MUNGE_SOCKET): stopped"; up=1; }
    running "$CTLD_PID" || { echo "slurmctld (hpcfnodes): stopped"; up=1; }
    for node in "${NODES[@]}"; do
        running "$(slurmd_pid "$node")" || { echo "slurmd -N $node: stopped"; up=1; }
    done
    [ "$up" = 0 ] || return 3
    node_states
    nodes_ready
}

case "${1:-all}" in
    all) bash tests/infra/slurm.sh install && cmd_nodes_start ;;
    install) exec bash tests/infra/slurm.sh install ;;
    nodes-start) cmd_nodes_start ;;
    nodes-stop) cmd_nodes_stop ;;
    nodes-status) cmd_nodes_status ;;
    *) echo "usage: $0 [install|nodes-start|nodes-stop|nodes-status]" >&2; exit 2 ;;
esac
