"""Fake ``condor_submit``, ``condor_q``, ``condor_history`` and ``condor_rm`` for the HTCondor tests.

They print what HTCondor prints (see ``tests/providers/recorded/condor_*.txt``):
``Submitting job(s).`` / ``1 job(s) submitted to cluster 42.`` (or ``42.0 - 42.0`` with
``-terse``), ``-af``/``-autoformat`` rows (``:j`` puts the job id first, ``:t`` separates
fields with tabs, a missing attribute prints ``undefined``), ``Job 42.0 marked for
removal``, ``Couldn't find/remove all jobs in cluster 42``.  Completed jobs leave the queue
and are listed by ``condor_history``; removed jobs show ``JobStatus`` 3 with a
``RemoveReason``.  Of ``periodic_remove`` only the walltime form ``(time() -
EnteredCurrentStatus) > N`` is enforced.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time

import _fakesched as fs

_WALLTIME = re.compile(r"\(time\(\) - EnteredCurrentStatus\) > (\d+)")


def _error(message: str, code: int = 1) -> int:
    sys.stderr.write(message + "\n")
    return code


def split_arguments(value: str) -> list[str]:
    """Split an ``arguments`` value in HTCondor's new syntax ("..." with '...' groups, quotes doubled)."""
    value = value.strip()
    if not (value.startswith('"') and value.endswith('"')):
        return value.split()  # the old syntax: plain words
    text = value[1:-1].replace('""', '"')
    args: list[str] = []
    current, quoted, started, i = "", False, False, 0
    while i < len(text):
        c = text[i]
        if c == "'":
            if quoted and text[i + 1 : i + 2] == "'":
                current += "'"
                i += 1
            else:
                quoted = not quoted
                started = True
        elif c == " " and not quoted:
            if current or started:
                args.append(current)
            current, started = "", False
        else:
            current += c
        i += 1
    if current or started:
        args.append(current)
    return args


def _read_description(text: str, appended: list[str]) -> tuple[dict[str, str], int] | str:
    """Return (commands, how many jobs to queue) from a submit description, or an error."""
    commands: dict[str, str] = {}
    count = 0
    lines = [line.strip() for line in text.splitlines()]
    for line in lines:
        if not line or line.startswith("#"):
            continue
        if re.fullmatch(r"queue(\s+\d+)?", line, re.IGNORECASE):
            for extra in appended:
                key, _, value = extra.partition("=")
                commands[key.strip().lower()] = value.strip()
            count += int(line.split()[1]) if len(line.split()) > 1 else 1
            continue
        key, sep, value = line.partition("=")
        if not sep:
            return f'ERROR: on Line {lines.index(line) + 1} of submit file: \nSubmit:0:Parse error: "{line}"'
        commands[key.strip().lower()] = value.strip()
    if count == 0:
        return "ERROR: no queue statement in the submit description"
    return commands, count


def condor_submit(args: list[str]) -> int:
    appended: list[str] = []
    terse = False
    path = None
    i = 0
    while i < len(args):
        if args[i] in ("-append", "-a") and i + 1 < len(args):
            appended.append(args[i + 1])
            i += 1
        elif args[i] == "-terse":
            terse = True
        elif args[i] in ("-verbose", "-v"):
            pass
        elif args[i] == "-" or not args[i].startswith("-"):
            path = args[i]
        else:
            return _error(f"condor_submit: unknown option {args[i]}")
        i += 1
    if path in (None, "-"):
        text = sys.stdin.read()
    else:
        try:
            text = open(str(path)).read()
        except OSError:
            return _error(f'ERROR: Can\'t open "{path}"  with flags 00 (No such file or directory)')
    parsed = _read_description(text, appended)
    if isinstance(parsed, str):
        return _error(parsed)
    commands, count = parsed
    if commands.get("universe", "vanilla").lower() != "vanilla":
        return _error(f"ERROR: the fake HTCondor only runs the vanilla universe, not {commands['universe']}")
    executable = commands.get("executable")
    if not executable:
        return _error("ERROR: No 'executable' parameter was provided")
    if not os.path.exists(executable):
        return _error(f"ERROR: Executable file {executable} does not exist")
    for expression in ("requirements", "periodic_remove"):
        if expression in commands and commands[expression].count("(") != commands[expression].count(")"):
            return _error(
                f"ERROR: Parse error in expression:\n\t{commands[expression]}\nError in submit file"
            )
    for number in ("request_cpus", "request_memory"):
        if number in commands and not commands[number].isdigit():
            return _error(f"ERROR: {number} = {commands[number]} is not a number")
    initialdir = commands.get("initialdir", os.getcwd())
    if not os.path.isdir(initialdir):
        return _error(f"ERROR: No such directory: {initialdir}")

    def place(name: str) -> str:
        value = commands.get(name, "/dev/null")
        return value if os.path.isabs(value) else os.path.join(initialdir, value)

    match = _WALLTIME.search(commands.get("periodic_remove", ""))
    ids = []
    for _ in range(count):
        job = fs.new_job(
            {
                "script": executable,
                "argv": [executable, *split_arguments(commands.get("arguments", ""))],
                "cwd": initialdir,
                "stdout": place("output"),
                "stderr": place("error"),
                "name": commands.get("batch_name", ""),
                "commands": commands,
                "walltime": int(match.group(1)) if match else None,
                "inherit_env": commands.get("getenv", "false").lower() == "true",
            },
            first_id=41,
        )
        env = {"_CONDOR_JOB_IWD": initialdir, "_CONDOR_SCRATCH_DIR": initialdir, "CONDOR_CLUSTER": job["id"]}
        job = fs.update(job["id"], lambda j, env=env: j.update(env=env)) or job
        if "log" in commands:
            with open(place("log"), "a") as log:
                stamp = time.strftime("%m/%d %H:%M:%S")
                log.write(
                    f"000 ({int(job['id']):03d}.000.000) {stamp} Job submitted from host: "
                    f"<127.0.0.1:9618?addrs=127.0.0.1-9618&alias={socket.gethostname()}>\n...\n"
                )
        fs.start(job)
        ids.append(job["id"])
    if terse:
        print(f"{ids[0]}.0 - {ids[-1]}.0")
    else:
        print("Submitting job(s)" + "." * count)
        print(f"{count} job(s) submitted to cluster {ids[0]}.")
    return 0


def _in_queue(job: fs.Job) -> bool:
    return job["state"] != "finished"


def _removed(job: fs.Job) -> bool:
    return bool(job["cancel_requested"] or job["timed_out"])


def _attribute(job: fs.Job, name: str) -> str:
    finished = job["state"] == "finished"
    code = job["returncode"]
    if name == "JobStatus":
        if _removed(job):
            return "3"
        return {"pending": "1", "running": "2"}.get(job["state"], "4")
    if name == "ClusterId":
        return job["id"]
    if name == "ProcId":
        return "0"
    if name in ("Owner", "User"):
        return fs.user() if name == "Owner" else f"{fs.user()}@{socket.gethostname()}"
    if name == "JobBatchName":
        return job["name"] or "undefined"
    if name == "Iwd":
        return job["cwd"]
    if name == "Cmd":
        return job["argv"][0]
    if finished and not _removed(job) and code is not None:
        if name == "ExitCode" and code >= 0:
            return str(code)
        if name == "ExitBySignal":
            return "true" if code < 0 else "false"
        if name == "ExitSignal" and code < 0:
            return str(-code)
    if name == "RemoveReason" and _removed(job):
        if job["timed_out"]:
            expression = job["commands"].get("periodic_remove", "")
            return f"The job attribute PeriodicRemove expression '{expression}' evaluated to TRUE"
        return f"via condor_rm (by user {fs.user()})"
    return "undefined"


def _parse_query(args: list[str]) -> tuple[list[str], list[str] | None, str, str | None, int | None] | str:
    """Return (ids, -af attributes, -af flags, constraint, limit) or an error."""
    ids: list[str] = []
    attributes: list[str] | None = None
    flags = ""
    constraint = None
    limit = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith(("-af", "-autoformat")):
            flags = arg.partition(":")[2]
            attributes = []
            while i + 1 < len(args) and not args[i + 1].startswith("-"):
                attributes.append(args[i + 1])
                i += 1
        elif arg in ("-constraint", "-const") and i + 1 < len(args):
            constraint = args[i + 1]
            i += 1
        elif arg in ("-limit", "-match") and i + 1 < len(args):
            limit = int(args[i + 1])
            i += 1
        elif arg in ("-nobatch", "-allusers", "-all", "-wide"):
            pass
        elif arg.startswith("-"):
            return f"Error: unrecognized option {arg}"
        elif re.fullmatch(r"\d+(\.\d+)?", arg):
            ids.append(arg)
        else:
            return f"Error: the fake HTCondor does not take owner names ({arg})"
        i += 1
    return ids, attributes, flags, constraint, limit


def _select(jobs: list[fs.Job], ids: list[str], constraint: str | None) -> list[fs.Job] | str:
    if constraint is not None:
        clusters = re.findall(r"ClusterId\s*==\s*(\d+)", constraint)
        rest = re.sub(r"ClusterId\s*==\s*\d+|\|\||[()\s]", "", constraint)
        if rest or not clusters:
            return f"Error: the fake HTCondor cannot evaluate the constraint {constraint!r}"
        jobs = [job for job in jobs if job["id"] in clusters]
    if ids:
        wanted = {i.split(".")[0] for i in ids if i.endswith(".0") or "." not in i}
        jobs = [job for job in jobs if job["id"] in wanted]
    return jobs


def _print_af(jobs: list[fs.Job], attributes: list[str], flags: str) -> None:
    separator = "\t" if "t" in flags else " "
    for job in jobs:
        values = [_attribute(job, name) for name in attributes]
        if "j" in flags:
            values.insert(0, f"{job['id']}.0")
        print(separator.join(values))


def condor_q(args: list[str]) -> int:
    query = _parse_query(args)
    if isinstance(query, str):
        return _error(query)
    ids, attributes, flags, constraint, _ = query
    selected = _select([job for job in fs.all_jobs() if _in_queue(job)], ids, constraint)
    if isinstance(selected, str):
        return _error(selected)
    if attributes is not None:
        _print_af(selected, attributes, flags)
        return 0
    now = time.time()
    print(
        f"\n\n-- Schedd: {socket.gethostname()} : <127.0.0.1:9618?... @ {time.strftime('%m/%d/%y %H:%M:%S')}"
    )
    print(" ID      OWNER            SUBMITTED     RUN_TIME ST PRI SIZE CMD")
    counts = {"1": 0, "2": 0, "3": 0}
    for job in selected:
        status = _attribute(job, "JobStatus")
        counts[status] = counts.get(status, 0) + 1
        run = int(now - job["started"]) if job["started"] else 0
        print(
            f"{job['id'] + '.0':>8}   {fs.user():<14} {time.strftime('%m/%d %H:%M', time.localtime(job['submitted']))}"
            f"   0+{run // 3600:02d}:{run % 3600 // 60:02d}:{run % 60:02d} {'IRX'[int(status) - 1]}  0    0.0 "
            f"{' '.join(job['argv'])}"
        )
    print(
        f"\nTotal for query: {len(selected)} jobs; 0 completed, {counts['3']} removed, {counts['1']} idle, "
        f"{counts['2']} running, 0 held, 0 suspended"
    )
    return 0


def condor_history(args: list[str]) -> int:
    query = _parse_query(args)
    if isinstance(query, str):
        return _error(query)
    ids, attributes, flags, constraint, limit = query
    finished = [job for job in reversed(fs.all_jobs()) if not _in_queue(job)]  # newest first
    selected = _select(finished, ids, constraint)
    if isinstance(selected, str):
        return _error(selected)
    selected = selected[:limit] if limit is not None else selected
    if attributes is None:
        print(" ID     OWNER          SUBMITTED   RUN_TIME     ST COMPLETED   CMD")
        for job in selected:
            status = "X" if _removed(job) else "C"
            print(f"{job['id'] + '.0':>6}  {fs.user():<14} {status}  {' '.join(job['argv'])}")
        return 0
    _print_af(selected, attributes, flags)
    return 0


def condor_rm(args: list[str]) -> int:
    targets = [a for a in args if not a.startswith("-")]
    if not targets:
        return _error("condor_rm: you must specify a job, a cluster, a user or -all")
    failed = False
    for target in targets:
        cluster, _, proc = target.partition(".")
        job = fs.load(cluster) if proc in ("", "0") else None
        if job is None or not _in_queue(job):
            failed = True
            if proc:
                sys.stderr.write(f"Job {target} not found\n")
            else:
                sys.stderr.write(f"Couldn't find/remove all jobs in cluster {cluster}\n")
            continue
        fs.request_cancel(cluster)
        print(
            f"Job {target} marked for removal"
            if proc
            else f"All jobs in cluster {cluster} have been marked for removal"
        )
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    """Run the command named by ``argv[0]``."""
    fs.log_call(argv)
    command = os.path.basename(argv[0])
    commands = {
        "condor_submit": condor_submit,
        "condor_q": condor_q,
        "condor_history": condor_history,
        "condor_rm": condor_rm,
    }
    return commands[command](argv[1:])
