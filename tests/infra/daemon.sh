# Shell helpers shared by the Slurm scripts (tests/infra/slurm.sh, .ci/setup-slurm.sh).
# The sourcing script defines say (a log line) and running PIDFILE (whether the daemon the
# file names is alive).

stop_daemon() {  # stop_daemon NAME PIDFILE: SIGTERM, up to 15 s, then SIGKILL
    local name=$1 pidfile=$2 pid _
    running "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid="$(cat "$pidfile")"
    kill -TERM "$pid"
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name ($pid) ignored SIGTERM for 15 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    say "stopped $name"
}
