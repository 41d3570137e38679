#!/usr/bin/env bash
# A single-node Son of Grid Engine cluster on this machine, for the GridEngineProvider tests.
#
#   sge.sh install   install Debian's gridengine packages (.ci/setup-sge.sh)
#   sge.sh start     configure the cell once and start sge_qmaster and sge_execd if not running
#   sge.sh stop      delete every job, then stop both daemons by the PIDs in their pidfiles
#   sge.sh status    exit 0 when the queue all.q on this host takes jobs, else 3
#
# The cluster: queue all.q on this host with $(nproc) slots, parallel environment "smp"
# (allocation_rule $pe_slots), root allowed to run jobs, scheduling every second and
# accounting written at once so that `qacct -j` knows a job as soon as it ends.  The daemons
# listen on SGE's ports 6444/6445 (Slurm uses 6817/6818, so both clusters can run together).
# Every step is idempotent; start does nothing when the cluster already runs.
set -euo pipefail

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
HOST="$(hostname -s)"
COMMON="$SGE_ROOT/$SGE_CELL/common"
QMASTER_PID=/var/spool/gridengine/qmaster/qmaster.pid
CONF_DIR="$SGE_ROOT/hpcfutures-conf"   # the configuration files handed to qconf
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { echo "[sge.sh] $*" >&2; }
# A pidfile left by a daemon that died may name a pid now reused by another process: check
# that the process is one of Grid Engine's, and not a zombie nobody has reaped yet.
alive() { local pid; [ -s "$1" ] && pid="$(cat "$1")" && kill -0 "$pid" 2>/dev/null && grep -q '^sge_' "/proc/$pid/comm" 2>/dev/null \
  && [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]; }
execd_pidfile() { compgen -G '/var/spool/gridengine/execd/*/execd.pid' | head -n 1 || true; }

# Print "ok" when the queue instance on this host reports load and has no state flags
# (u: unknown, d: disabled, E: error, …), else the flags or "none".
queue_state() {
  timeout 10 qstat -f -q all.q 2>/dev/null |
    awk -v q="all.q@$HOST" '$1 == q { found = 1; print ($6 == "" ? "ok" : $6) } END { if (!found) print "none" }'
}

install() {
  bash "$HERE/../../.ci/setup-sge.sh"
}

# SGE's commlib compares the name a client claims with the reverse lookup of its address:
# here 127.0.0.1 resolves back to "localhost", not to the host name, and every command would
# be refused ("access denied … not identical to clients host name").  host_aliases makes the
# two names one host.
fix_host_names() {
  getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >> /etc/hosts
  if [ ! -s "$COMMON/bootstrap" ]; then   # packages installed without debconf answers
    log "creating cell $SGE_CELL"
    su -s /bin/sh -c "/usr/share/gridengine/scripts/init_cluster $SGE_ROOT $SGE_CELL /var/spool/gridengine/spooldb sgeadmin" sgeadmin
  fi
  echo "$HOST" > "$COMMON/act_qmaster"
  if [ "$HOST" != localhost ] && [ "$(cat "$COMMON/host_aliases" 2>/dev/null)" != "$HOST localhost" ]; then
    echo "$HOST localhost" > "$COMMON/host_aliases"
    chown sgeadmin:sgeadmin "$COMMON/host_aliases"
    if alive "$QMASTER_PID"; then   # the qmaster reads host_aliases only when it starts
      stop_daemons
    fi
  fi
}

start_qmaster() {
  install -d -o sgeadmin -g sgeadmin /var/run/gridengine /var/spool/gridengine/execd
  if ! alive "$QMASTER_PID"; then
    log "starting sge_qmaster"
    /usr/sbin/sge_qmaster   # forks, drops to sgeadmin, writes its pidfile
  fi
  for _ in $(seq 150); do
    timeout 10 qstat >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "sge_qmaster does not answer; its last messages:"
  tail -n 20 /var/spool/gridengine/qmaster/messages >&2 || true
  exit 1
}

# The objects a fresh cell lacks.  qconf -A* fails when an object exists, so each is tested.
configure() {
  mkdir -p "$CONF_DIR/conf"
  qconf -ss 2>/dev/null | grep -qx "$HOST" || qconf -as "$HOST" >/dev/null
  # min_uid/min_gid 1000 would refuse root's jobs; accounting is otherwise flushed every 15 s.
  if ! qconf -sconf global | grep -Eq '^min_uid +0$' || ! qconf -sconf global | grep -q 'accounting_flush_time=00:00:00'; then
    qconf -sconf global | sed -E 's/^(min_uid +).*/\10/; s/^(min_gid +).*/\10/; s/^(load_report_time +).*/\100:00:05/;
        s/flush_time=00:00:15/flush_time=00:00:01 accounting_flush_time=00:00:00/' > "$CONF_DIR/conf/global"
    (cd "$CONF_DIR/conf" && qconf -Mconf global >/dev/null)   # the file name must be the configuration's name
  fi
  if ! qconf -ssconf | grep -Eq '^schedule_interval +0:0:1$'; then
    qconf -ssconf | sed -E 's/^(schedule_interval +).*/\10:0:1/; s/^(flush_submit_sec +).*/\11/; s/^(flush_finish_sec +).*/\11/' \
      > "$CONF_DIR/scheduler.conf"
    qconf -Msconf "$CONF_DIR/scheduler.conf" >/dev/null
  fi
  if ! qconf -sel 2>/dev/null | grep -qx "$HOST"; then
    cat > "$CONF_DIR/exechost.conf" <<CONF
hostname $HOST
load_scaling NONE
complex_values NONE
user_lists NONE
xuser_lists NONE
projects NONE
xprojects NONE
usage_scaling NONE
report_variables NONE
CONF
    qconf -Ae "$CONF_DIR/exechost.conf" >/dev/null
  fi
  if ! qconf -spl 2>/dev/null | grep -qx smp; then
    cat > "$CONF_DIR/smp.pe" <<'CONF'
pe_name            smp
slots              999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    $pe_slots
control_slaves     TRUE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
CONF
    qconf -Ap "$CONF_DIR/smp.pe" >/dev/null
  fi
  if ! qconf -sql 2>/dev/null | grep -qx all.q; then
    {
      printf 'qname all.q\nhostlist %s\nseq_no 0\nload_thresholds NONE\nsuspend_thresholds NONE\nnsuspend 1\n' "$HOST"
      printf 'suspend_interval 00:05:00\npriority 0\nmin_cpu_interval 00:05:00\nprocessors UNDEFINED\nqtype BATCH INTERACTIVE\n'
      printf 'ckpt_list NONE\npe_list smp\nrerun FALSE\nslots %s\ntmpdir /tmp\nshell /bin/bash\nprolog NONE\nepilog NONE\n' "$(nproc)"
      printf 'shell_start_mode unix_behavior\nstarter_method NONE\nsuspend_method NONE\nresume_method NONE\nterminate_method NONE\n'
      printf 'notify 00:00:60\nowner_list NONE\nuser_lists NONE\nxuser_lists NONE\nsubordinate_list NONE\ncomplex_values NONE\n'
      printf 'projects NONE\nxprojects NONE\ncalendar NONE\ninitial_state default\n'
      for limit in rt cpu fsize data stack core rss vmem; do printf 's_%s INFINITY\nh_%s INFINITY\n' "$limit" "$limit"; done
    } > "$CONF_DIR/all.q.conf"
    qconf -Aq "$CONF_DIR/all.q.conf" >/dev/null
  fi
}

start_execd() {
  local pidfile
  pidfile="$(execd_pidfile)"
  if [ -z "$pidfile" ] || ! alive "$pidfile"; then
    log "starting sge_execd"
    # Its spool directory is named after the local reverse lookup ("localhost").  Right
    # after a stop, the old execd may still hold its port for a moment: try again then.
    local attempt started=no
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
      if /usr/sbin/sge_execd; then started=yes; break; fi
      log "sge_execd did not start (attempt $attempt): is port 6445 still held? retrying in 2 s"
      sleep 2
    done
    [ "$started" = yes ] || { log "sge_execd would not start"; exit 1; }
  fi
  local state=none
  for _ in $(seq 300); do
    state="$(queue_state)"
    [ "$state" = ok ] && { log "ready: all.q@$HOST with $(nproc) slots"; return 0; }
    case "$state" in
      *E*) qmod -c "all.q@$HOST" >/dev/null 2>&1 || true ;;   # an error state left by an old job
      *d*) qmod -e "all.q@$HOST" >/dev/null 2>&1 || true ;;
    esac
    sleep 0.1
  done
  log "queue all.q@$HOST not ready (state '$state')"
  timeout 10 qstat -f >&2 || true
  exit 1
}

start() {
  if [ ! -x /usr/sbin/sge_qmaster ] || [ ! -x /usr/sbin/sge_execd ]; then
    log "gridengine is not installed; run: bash tests/infra/sge.sh install"
    exit 2
  fi
  if alive "$QMASTER_PID" && [ "$(queue_state)" = ok ]; then
    log "already running"
    return 0
  fi
  fix_host_names
  start_qmaster
  configure
  start_execd
}

stop_pid() {
  local name=$1 pidfile=$2 pid
  if ! alive "$pidfile"; then
    return 0
  fi
  pid="$(cat "$pidfile")"
  kill -TERM "$pid"
  for _ in $(seq 200); do   # the qmaster takes about 10 s to write its state and exit
    kill -0 "$pid" 2>/dev/null || { log "$name ($pid) stopped"; return 0; }
    sleep 0.1
  done
  log "$name ($pid) ignored SIGTERM for 20 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

stop_daemons() {
  local pidfile
  for pidfile in /var/spool/gridengine/execd/*/execd.pid; do
    [ -e "$pidfile" ] && stop_pid sge_execd "$pidfile"
  done
  stop_pid sge_qmaster "$QMASTER_PID"
}

stop() {
  # Delete every job first, so that no job's processes outlive the execd.
  if alive "$QMASTER_PID" && [ -n "$(timeout 10 qstat -u '*' 2>/dev/null)" ]; then
    timeout 20 qdel -f -u '*' >/dev/null 2>&1 || true
    for _ in $(seq 100); do
      [ -z "$(timeout 10 qstat -u '*' 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
  stop_daemons
}

status() {
  if alive "$QMASTER_PID" && [ "$(queue_state)" = ok ]; then
    echo "running: all.q@$HOST"
    return 0
  fi
  echo "not running"
  return 3
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 {install|start|stop|status}" >&2; exit 64 ;;
esac
