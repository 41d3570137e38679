"""Fake Cobalt ``qsub``, ``qstat`` and ``qdel`` for the Cobalt provider tests.

They print what Cobalt prints (see ``tests/providers/recorded/cobalt_*.txt``): ``qsub``
prints the job id alone; ``qstat`` prints the ``JobID  User  WallTime  Nodes  State
Location`` table (cells padded to the widest entry plus two spaces, a rule of ``=`` under
the header) with the states ``queued``, ``user_hold``, ``running``, ``killing``, and lists
only jobs still in the queue; ``qdel`` prints ``Deleted Jobs`` and a ``JobID  User``
table.  ``#COBALT`` lines at the top of the script are read like ``qsub`` options.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys

import _fakesched as fs

_QUEUES_VARIABLE = "HPCF_FAKE_COBALT_QUEUES"
_VALUE_OPTIONS = {
    "-t": "time",
    "-n": "nodecount",
    "-q": "queue",
    "-A": "project",
    "--attrs": "attrs",
    "-o": "output",
    "-e": "error",
    "-O": "outputprefix",
    "--mode": "mode",
    "--env": "env",
    "--cwd": "cwd",
    "-M": "notify",
    "--debuglog": "debuglog",
}
_FLAG_OPTIONS = {"-h": "held", "-v": "verbose", "-d": "debug"}


def _error(message: str, code: int = 1) -> int:
    sys.stderr.write(message + "\n")
    return code


def _parse(tokens: list[str], options: dict[str, str | bool]) -> tuple[list[str], str | None]:
    """Fill *options* from qsub arguments; return the remaining command words and an error."""
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name, eq, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        if name in _FLAG_OPTIONS:
            options[_FLAG_OPTIONS[name]] = True
        elif name in _VALUE_OPTIONS:
            if eq:
                options[_VALUE_OPTIONS[name]] = inline
            elif i + 1 < len(tokens):
                options[_VALUE_OPTIONS[name]] = tokens[i + 1]
                i += 1
            else:
                return [], f"qsub.py: error: {name} option requires an argument"
        elif len(token) > 2 and token[:2] in _VALUE_OPTIONS and not token.startswith("--"):  # -t10
            options[_VALUE_OPTIONS[token[:2]]] = token[2:]
        elif token.startswith("-"):
            return [], f"Usage: qsub.py --help\n\nqsub.py: error: no such option: {token}"
        else:
            return tokens[i:], None
        i += 1
    return [], None


def _minutes(value: str) -> int:
    """Read ``-t`` as minutes or ``HH:MM:SS``."""
    parts = value.split(":")
    if not all(p.isdigit() for p in parts) or len(parts) not in (1, 3):
        raise ValueError(value)
    if len(parts) == 1:
        return int(parts[0])
    return int(parts[0]) * 60 + int(parts[1]) + (1 if int(parts[2]) else 0)


def qsub(args: list[str]) -> int:
    options: dict[str, str | bool] = {}
    command, problem = _parse(args, options)
    if problem:
        return _error(problem, 2)
    if not command:
        return _error("No executable or script specified")
    script = command[0]
    cwd = str(options.get("cwd", os.getcwd()))
    script = script if os.path.isabs(script) else os.path.join(cwd, script)
    if not os.path.isfile(script):
        return _error(f"command {script} not found, or is not a file")
    if not os.access(script, os.X_OK):
        return _error(f"Script {script} is not executable")
    embedded: dict[str, str | bool] = {}
    with open(script) as f:
        for line in f.read().splitlines()[1:]:
            if not line.startswith("#COBALT"):
                break  # Cobalt reads #COBALT lines right after the shebang
            _, problem = _parse(shlex.split(line[len("#COBALT") :]), embedded)
            if problem:
                return _error(problem, 2)
    options = {**embedded, **options}  # the command line wins
    needed = [name for name in ("time", "nodecount") if name not in options]
    if needed:
        return _error(f"Not all required arguments provided: {','.join(needed)} needed")
    try:
        minutes = _minutes(str(options["time"]))
    except ValueError:
        return _error(f"invalid time specification: {options['time']}")
    if not str(options["nodecount"]).isdigit() or int(str(options["nodecount"])) < 1:
        return _error("Error: non-integer node count specified with -n option")
    queues = os.environ.get(_QUEUES_VARIABLE, "default,debug-cache-quad,debug-flat-quad").split(",")
    queue = str(options.get("queue", "default"))
    if queue not in queues:
        return _error(
            f'component error: XMLRPC failure <Fault 1001: "trying to add job to non-existant queue '
            f"'{queue}'\"> in queue-manager.add_jobs"
        )
    job = fs.new_job(
        {
            "script": script,
            "cwd": cwd,
            "queue": queue,
            "nodes": int(str(options["nodecount"])),
            "minutes": minutes,
            "walltime": minutes * fs.seconds_per_minute(),
            "held": bool(options.get("held")),
            "options": options,
        },
        first_id=362001,
    )
    job_id = job["id"]
    prefix = str(options.get("outputprefix", os.path.join(cwd, job_id)))
    env = {
        "COBALT_JOBID": job_id,
        "COBALT_JOBSIZE": str(job["nodes"]),
        "COBALT_PARTNAME": ",".join(str(n) for n in range(job["nodes"])),
    }
    for pair in str(options.get("env", "")).split(":"):
        key, eq, value = pair.partition("=")
        if eq:
            env[key] = value
    stdout = str(options.get("output", prefix + ".output"))
    stderr = str(options.get("error", prefix + ".error"))
    job = fs.update(job_id, lambda j: j.update(stdout=stdout, stderr=stderr, env=env)) or job
    fs.start(job)
    print(job_id)
    return 0


def _tabular(rows: list[list[str]], rule: bool = True) -> None:
    """Print rows like Cobalt's ``print_tabular``: cells padded to the widest plus two spaces."""
    widths = [max(len(row[i]) for row in rows) + 2 for i in range(len(rows[0]))]
    lines = ["".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    if rule:
        lines.insert(1, "=" * sum(widths))
    print("\n".join(lines))


def _state(job: fs.Job) -> str:
    if job["state"] == "pending":
        return "user_hold" if job.get("held") else "queued"
    return "killing" if job["cancel_requested"] else "running"


def qstat(args: list[str]) -> int:
    user = None
    ids: list[str] = []
    i = 0
    while i < len(args):
        if args[i] in ("-u", "--user") and i + 1 < len(args):
            user = args[i + 1]
            i += 1
        elif args[i] in ("-f", "--full", "-l", "--long"):
            return _error("the fake qstat prints only the default table")
        elif args[i].startswith("-"):
            return _error(
                f"Usage: qstat.py [options] <jobids1> ... <jobidsN>\n\nqstat.py: error: no such option: {args[i]}",
                2,
            )
        elif not args[i].isdigit():
            return _error(f"jobid must be an integer: {args[i]}")
        else:
            ids.append(args[i])
        i += 1
    me = fs.user()
    jobs = [job for job in fs.all_jobs() if job["state"] != "finished"]
    if ids:
        jobs = [job for job in jobs if job["id"] in ids]
    if user is not None and user != me:
        jobs = []
    rows = [["JobID", "User", "WallTime", "Nodes", "State", "Location"]]
    host = socket.gethostname().split(".")[0]
    for job in jobs:
        minutes = job["minutes"]
        walltime = f"{minutes // 60:02d}:{minutes % 60:02d}:00"
        location = "None" if job["state"] == "pending" else host
        rows.append([job["id"], me, walltime, str(job["nodes"]), _state(job), location])
    _tabular(rows)
    return 0


def qdel(args: list[str]) -> int:
    ids = [a for a in args if not a.startswith("-")]
    if not ids:
        return _error("Usage:\nqdel [--version] [-f] <jobid> <jobid>")
    for job_id in ids:
        if not job_id.isdigit():
            return _error(f"jobid must be an integer: {job_id}")
    deleted = []
    for job_id in ids:
        before = fs.request_cancel(job_id)
        if before not in (None, "finished"):
            deleted.append(job_id)
    if deleted:
        print("      Deleted Jobs")
        _tabular([["JobID", "User"]] + [[job_id, fs.user()] for job_id in deleted])
    else:
        print(f"qdel: Job {ids[-1]} not found")
    return 0


def main(argv: list[str]) -> int:
    """Run the command named by ``argv[0]``."""
    fs.log_call(argv)
    command = os.path.basename(argv[0])
    return {"qsub": qsub, "qstat": qstat, "qdel": qdel}[command](argv[1:])
