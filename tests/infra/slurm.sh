#!/usr/bin/env bash
# A real single-node Slurm cluster on loopback for hpcfutures' tests: munged, slurmctld and
# slurmd from Debian's packages, one node sized from `slurmd -C`, partition "debug", and the
# PBS/Torque commands of slurm-wlm-torque (qsub/qstat/qdel over Slurm).
#
#   slurm.sh install   install the packages (needs root; does nothing when they are present)
#   slurm.sh start     install if needed, write slurm.conf, start the daemons, wait for the node
#   slurm.sh stop      cancel every job, then stop slurmd, slurmctld and munged by their pids
#   slurm.sh status    print the daemons and the node; exit 0 only when the node takes jobs
#
# Every command is idempotent: `start` on a running cluster only checks it (it restarts the
# daemons when slurm.conf changed), `stop` on a stopped one does nothing.  Written for Debian
# 12 as root without systemd: package scripts do not start daemons there, so we do.
#
# slurm-wlm-torque conflicts with gridengine-client (both ship /usr/bin/qsub), and the
# GridEngine tests need the latter, so its wrappers are unpacked into $TORQUE_BIN instead of
# installed; PBS tests put that directory first on PATH.
#
# Environment: SLURM_PARTITION (default debug), SLURM_READY_TIMEOUT (seconds, default 90),
# TORQUE_BIN (default /opt/hpcfutures-torque/bin).
set -euo pipefail

PARTITION="${SLURM_PARTITION:-debug}"
READY_TIMEOUT="${SLURM_READY_TIMEOUT:-90}"
TORQUE_BIN="${TORQUE_BIN:-/opt/hpcfutures-torque/bin}"
NODE="$(hostname -s)"
CONF=/etc/slurm/slurm.conf
LOGS=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
PACKAGES=(munge slurmctld slurmd slurm-client libslurm-perl libslurmdb-perl libswitch-perl)

say() { echo "[slurm.sh] $*" >&2; }
die() { say "$*"; exit 1; }
# A stale pidfile may name a pid now reused by another process, or a dead daemon nobody has
# reaped yet: check it is a live Slurm or munge daemon.
running() { local pid; [ -s "$1" ] && pid="$(cat "$1")" && kill -0 "$pid" 2>/dev/null && grep -qE '^(slurm|munge)' "/proc/$pid/comm" 2>/dev/null \
  && [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    # The image's package lists may be stale; update once and retry before giving up.
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}

packages_present() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || return 1
    done
    [ -x "$TORQUE_BIN/qsub" ] && [ -x "$TORQUE_BIN/qstat" ] && [ -x "$TORQUE_BIN/qdel" ]
}

install_torque_wrappers() {
    local tmp tool
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download slurm-wlm-torque >/dev/null 2>&1) \
        || { apt-get update -qq && (cd "$tmp" && apt-get download slurm-wlm-torque >/dev/null); }
    dpkg-deb -x "$tmp"/slurm-wlm-torque_*.deb "$tmp/root"
    mkdir -p "$TORQUE_BIN"
    cp -a "$tmp/root/usr/bin/." "$TORQUE_BIN/"
    rm -rf "$tmp"
    # The Perl wrappers call "${FindBin::Bin}/sbatch" and friends: Slurm's tools must sit beside them.
    for tool in sbatch salloc srun squeue scontrol scancel sinfo sacct; do
        ln -sf "/usr/bin/$tool" "$TORQUE_BIN/$tool"
    done
}

cmd_install() {
    packages_present && return 0
    [ "$(id -u)" = 0 ] || die "installing ${PACKAGES[*]} needs root"
    say "installing ${PACKAGES[*]} and slurm-wlm-torque's wrappers into $TORQUE_BIN"
    apt_install "${PACKAGES[@]}"
    install_torque_wrappers
}

start_munge() {
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    # The package's postinst makes a key; make one only if it is missing.
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    if ! running "$MUNGE_PID"; then
        rm -f "$MUNGE_PID" /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
        say "starting munged"
        runuser -u munge -- /usr/sbin/munged 9>&-  # it refuses to run as root
    fi
    local _
    for _ in $(seq 100); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munged does not answer; see /var/log/munge/munged.log"
}

# Print the slurm.conf this machine should have.
render_conf() {
    local hardware
    # `slurmd -C` prints the node line Slurm expects (CPUs, sockets, RealMemory); a node
    # declared bigger than it is would be drained as INVAL.
    hardware="$(slurmd -C | head -n 1)"
    hardware="${hardware#NodeName=* }"
    cat <<EOF
# Written by hpcfutures' tests/infra/slurm.sh; rewritten on every start.
ClusterName=hpcfutures
SlurmctldHost=${NODE}(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
# Listen on the address the host name resolves to (loopback), not on every interface.
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOGS}/slurmctld.log
SlurmdLogFile=${LOGS}/slurmd.log
# No cgroups: processes are tracked by parentage, tasks are not bound to cores.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
# No slurmdbd: sacct reports "accounting storage is disabled"; finished jobs stay visible to
# squeue for MinJobAge seconds and in the job-completion log (sacct --completion).
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=${LOGS}/jobcomp.log
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
NodeName=${NODE} NodeAddr=127.0.0.1 ${hardware} State=UNKNOWN
PartitionName=${PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE DefaultTime=01:00:00 State=UP OverSubscribe=NO
EOF
}

. "$(dirname "${BASH_SOURCE[0]}")/daemon.sh"  # stop_daemon

node_state() { sinfo --noheader --nodes="$NODE" --format=%t 2>/dev/null || true; }

cmd_start() {
    [ "$(id -u)" = 0 ] || die "starting slurmctld and slurmd needs root"
    cmd_install
    getent hosts "$NODE" >/dev/null || { say "adding $NODE to /etc/hosts"; echo "127.0.0.1 $NODE" >>/etc/hosts; }
    start_munge
    install -d -m 0755 /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS"
    local new changed=0
    new="$(mktemp)"
    render_conf >"$new"
    if ! cmp -s "$new" "$CONF"; then
        install -m 0644 "$new" "$CONF"
        changed=1
    fi
    rm -f "$new"
    if [ "$changed" = 1 ] && { running "$SLURMD_PID" || running "$CTLD_PID"; }; then
        # `scontrol reconfigure` would not rebind ports or resize the node.
        say "slurm.conf changed: restarting the daemons"
        stop_daemon slurmd "$SLURMD_PID"
        stop_daemon slurmctld "$CTLD_PID"
    fi
    # Both daemons fork into the background and detach from our stdio.  -i: start even when
    # the saved state is unreadable (a VM restored from an image).
    # "9>&-": a daemon that inherited the lock's descriptor would hold the lock for its lifetime.
    running "$CTLD_PID" || { say "starting slurmctld"; slurmctld -i 9>&-; }
    running "$SLURMD_PID" || { say "starting slurmd"; slurmd 9>&-; }
    local deadline=$((SECONDS + READY_TIMEOUT)) state=""
    while [ "$SECONDS" -lt "$deadline" ]; do
        state="$(node_state)"
        case "$state" in
            idle | mix | alloc | comp) say "ready: node $NODE is $state"; return 0 ;;
            down* | drain* | drng* | fail*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    sinfo --Node --long >&2 || true
    tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
    die "node $NODE did not become idle within ${READY_TIMEOUT}s (state: ${state:-none})"
}

cmd_stop() {
    local ids _
    if running "$CTLD_PID"; then
        ids="$(squeue --noheader --format=%i 2>/dev/null | tr '\n' ' ')"
        if [ -n "${ids// /}" ]; then
            # Cancel first, so that no slurmstepd (and no job's processes) outlives slurmd.
            say "cancelling jobs $ids"
            # shellcheck disable=SC2086
            scancel $ids 2>/dev/null || true
            for _ in $(seq 150); do
                [ -z "$(squeue --noheader --format=%i 2>/dev/null)" ] && break
                sleep 0.1
            done
        fi
    fi
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$CTLD_PID"
    stop_daemon munged "$MUNGE_PID"
}

cmd_status() {
    local name pidfile up=0
    for name in munged:$MUNGE_PID slurmctld:$CTLD_PID slurmd:$SLURMD_PID; do
        pidfile="${name#*:}"
        if running "$pidfile"; then echo "${name%%:*}: running (pid $(cat "$pidfile"))"; else echo "${name%%:*}: stopped"; up=1; fi
    done
    [ "$up" = 0 ] || return 1
    local state
    state="$(node_state)"
    echo "node $NODE: ${state:-unknown}"
    case "$state" in idle | mix | alloc | comp) return 0 ;; *) return 1 ;; esac
}

# One start or stop at a time: test sessions running side by side may call this together.
exec 9>/run/hpcfutures-slurm.lock
flock --timeout 600 9 || die "another slurm.sh has held /run/hpcfutures-slurm.lock for 10 minutes"

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 {install|start|stop|status}" >&2; exit 2 ;;
esac
