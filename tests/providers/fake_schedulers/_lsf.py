"""Fake ``bsub``, ``bjobs`` and ``bkill`` for the LSF provider tests.

They print what IBM Spectrum LSF 10.1 prints (see ``tests/providers/recorded/lsf_*.txt``):
``Job <N> is submitted to queue <q>.``, ``bjobs`` tables and ``-o``/``delimiter`` output,
``Job <N> is not found``, ``Job <N> is being terminated``, ``Job <N>: Job has already
finished``.  A job's script is read from bsub's standard input with its ``#BSUB`` lines,
spooled, and run for real by ``_fakesched``.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import sys
import time

import _fakesched as fs

_QUEUES_VARIABLE = "HPCF_FAKE_LSF_QUEUES"
_VALUE_OPTIONS = {"-J", "-o", "-e", "-oo", "-eo", "-W", "-n", "-R", "-nnodes", "-M", "-q", "-P", "-cwd", "-G"}
_FLAG_OPTIONS = {"-x", "-N", "-B", "-r", "-rn"}
_BJOBS_FIELDS = {
    "jobid": "JOBID",
    "stat": "STAT",
    "exit_code": "EXIT_CODE",
    "exit_reason": "EXIT_REASON",
    "job_name": "JOB_NAME",
    "name": "JOB_NAME",
    "queue": "QUEUE",
    "user": "USER",
}


def _error(message: str, code: int = 255) -> int:
    sys.stderr.write(message + "\n")
    return code


def _parse_options(tokens: list[str], options: dict[str, str | bool]) -> str | None:
    """Fill *options* from bsub arguments; return an error message or None."""
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in _FLAG_OPTIONS:
            options[token] = True
        elif token in _VALUE_OPTIONS:
            if i + 1 >= len(tokens):
                return f"bsub: option requires an argument -- {token[1:]}"
            options[token] = tokens[i + 1]
            i += 1
        else:
            return f"bsub: illegal option -- {token.lstrip('-')}\nUsage: bsub [options] command [arguments]"
        i += 1
    return None


def _minutes(value: str) -> float:
    """Read ``-W [hour:]minute``."""
    parts = value.split("/")[0].split(":")
    if not all(p.isdigit() for p in parts) or len(parts) > 2:
        raise ValueError(value)
    return int(parts[0]) * 60 + int(parts[1]) if len(parts) == 2 else int(parts[0])


def bsub(args: list[str]) -> int:
    options: dict[str, str | bool] = {}
    problem = _parse_options(args, options)
    if problem:
        return _error(problem)
    script = sys.stdin.read()
    embedded: list[str] = []
    for line in script.splitlines()[1:] if script.startswith("#!") else script.splitlines():
        if line.startswith("#BSUB"):
            embedded.extend(shlex.split(line[len("#BSUB") :]))
        elif line.strip() and not line.lstrip().startswith("#"):
            break  # LSF stops reading #BSUB lines at the first command
    from_script: dict[str, str | bool] = {}
    problem = _parse_options(embedded, from_script)
    if problem:
        return _error(problem)
    options = {**from_script, **options}  # the command line wins
    queues = os.environ.get(_QUEUES_VARIABLE, "normal,short,long").split(",")
    queue = str(options.get("-q", queues[0]))
    if queue not in queues:
        return _error(f"{queue}: No such queue. Job not submitted.")
    walltime = None
    if "-W" in options:
        try:
            walltime = _minutes(str(options["-W"])) * fs.seconds_per_minute()
        except ValueError:
            return _error(f"{options['-W']}: Bad RUNLIMIT specification. Job not submitted.")
    for count in ("-n", "-nnodes"):
        if count in options and not str(options[count]).isdigit():
            return _error(f"{options[count]}: Bad argument for option -n. Job not submitted.")
    directory = fs.db_dir()
    job = fs.new_job(
        {
            "script": "",
            "name": str(options.get("-J", "NONAME")),
            "queue": queue,
            "cwd": str(options.get("-cwd", os.getcwd())),
            "options": {k: v for k, v in options.items()},
            "walltime": walltime,
        },
        first_id=4101,
    )
    job_id = job["id"]
    spool = directory / f"spool.{job_id}.sh"
    spool.write_text(script)
    stdout = str(options.get("-o", options.get("-oo", directory / f"lsf.{job_id}.out"))).replace("%J", job_id)
    stderr = str(options.get("-e", options.get("-eo", stdout))).replace("%J", job_id)
    slots = int(str(options.get("-n", options.get("-nnodes", "1"))))
    env = {
        "LSB_JOBID": job_id,
        "LSB_JOBNAME": job["name"],
        "LSB_QUEUE": queue,
        "LSB_DJOB_NUMPROC": str(slots),
        "LSB_HOSTS": " ".join([socket.gethostname()] * slots),
    }
    job = (
        fs.update(job_id, lambda j: j.update(script=str(spool), stdout=stdout, stderr=stderr, env=env)) or job
    )
    fs.start(job)
    where = f"queue <{queue}>" if "-q" in options else f"default queue <{queue}>"
    print(f"Job <{job_id}> is submitted to {where}.")
    return 0


def _stat(job: fs.Job) -> str:
    if job["state"] == "pending":
        return "PEND"
    if job["state"] == "running":
        return "RUN"
    return "DONE" if job["returncode"] == 0 else "EXIT"


def _exit_code(job: fs.Job) -> str:
    code = job["returncode"]
    if job["state"] != "finished" or code in (None, 0):
        return "-"
    return str(128 - code if code < 0 else code)  # LSF reports a signal as 128 + its number


def _exit_reason(job: fs.Job) -> str:
    if job["state"] != "finished":
        return "-"
    if job["timed_out"]:
        return "TERM_RUNLIMIT: job killed after reaching LSF run time limit"
    if job["cancel_requested"]:
        return "TERM_OWNER: job killed by owner"
    return "-"


def _field(job: fs.Job, name: str) -> str:
    values = {
        "jobid": job["id"],
        "stat": _stat(job),
        "exit_code": _exit_code(job),
        "exit_reason": _exit_reason(job),
        "job_name": job["name"],
        "name": job["name"],
        "queue": job["queue"],
        "user": fs.user(),
    }
    return values[name]


def bjobs(args: list[str]) -> int:
    show_all, header = False, True
    fields: list[str] | None = None
    delimiter = " "
    ids: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-a":
            show_all = True
        elif arg == "-noheader":
            header = False
        elif arg == "-w":
            pass
        elif arg == "-o" and i + 1 < len(args):
            spec = args[i + 1]
            match = re.search(r"delimiter='(.)'", spec)
            if match:
                delimiter = match.group(1)
                spec = spec[: match.start()]
            fields = [word.split(":")[0].lower() for word in spec.split()]
            unknown = [f for f in fields if f not in _BJOBS_FIELDS]
            if unknown:
                return _error(f"{unknown[0]}: Illegal field name in the -o option.")
            i += 1
        elif arg.startswith("-"):
            return _error(f"bjobs: illegal option -- {arg.lstrip('-')}")
        else:
            ids.append(arg)
        i += 1
    jobs = {job["id"]: job for job in fs.all_jobs()}
    if ids:
        shown = [jobs[j] for j in ids if j in jobs]
        missing = [j for j in ids if j not in jobs]
    else:
        shown = [job for job in jobs.values() if show_all or job["state"] != "finished"]
        missing = []
    lines = []
    if fields is not None:
        if header and shown:
            lines.append(delimiter.join(_BJOBS_FIELDS[f] for f in fields))
        lines.extend(delimiter.join(_field(job, f) for f in fields) for job in shown)
    else:
        row = "{:<7} {:<7} {:<5} {:<10} {:<11} {:<11} {:<10} {}"
        if header and shown:
            lines.append(
                row.format(
                    "JOBID", "USER", "STAT", "QUEUE", "FROM_HOST", "EXEC_HOST", "JOB_NAME", "SUBMIT_TIME"
                )
            )
        host = socket.gethostname().split(".")[0]
        for job in shown:
            stat = _stat(job)
            submitted = time.strftime("%b %d %H:%M", time.localtime(job["submitted"]))
            lines.append(
                row.format(
                    job["id"],
                    fs.user(),
                    stat,
                    job["queue"],
                    host,
                    "" if stat == "PEND" else host,
                    job["name"],
                    submitted,
                )
            )
    if lines:
        print("\n".join(lines))
    for job_id in missing:
        sys.stderr.write(f"Job <{job_id}> is not found\n")
    if not ids and not shown:
        sys.stderr.write("No job found\n" if show_all else "No unfinished job found\n")
    return 255 if ids and not shown else 0


def bkill(args: list[str]) -> int:
    ids = [a for a in args if not a.startswith("-")]
    if not ids:
        return _error("bkill: Job ID or one of '-m', '-u' '-g' '-q' and '-J' must be specified")
    failed = False
    for job_id in ids:
        before = fs.request_cancel(job_id)
        if before is None:
            sys.stderr.write(f"Job <{job_id}>: No matching job found\n")
            failed = True
        elif before == "finished":
            sys.stderr.write(f"Job <{job_id}>: Job has already finished\n")
            failed = True
        else:
            print(f"Job <{job_id}> is being terminated")
    return 255 if failed else 0


def main(argv: list[str]) -> int:
    """Run the command named by ``argv[0]``."""
    fs.log_call(argv)
    command = os.path.basename(argv[0])
    return {"bsub": bsub, "bjobs": bjobs, "bkill": bkill}[command](argv[1:])
