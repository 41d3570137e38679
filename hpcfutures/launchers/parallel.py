"""GnuParallelLauncher: one copy of the command per node through GNU parallel over ssh."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from .._validate import keyword_renamed
from ._fragment import BASH, check_call, check_flags, check_path_or_variable, path_or_variable
from .base import Launcher

#: Environment variables naming the job's nodes, in the order they are tried.  Each names a
#: file whose lines start with a host name, except SLURM_JOB_NODELIST, a Slurm host list.
NODE_SOURCES = ("PBS_NODEFILE", "SLURM_JOB_NODELIST", "LSB_DJOB_HOSTFILE", "PE_HOSTFILE", "COBALT_NODEFILE")

# $1: the hostfile ("" to look at the batch system's variables); $2: the number of copies;
# $3: the command each copy runs through parallel.  Prints why it fails when the node list
# cannot be read; names of this host become ":" (run here, without ssh).
_NODES = (
    'if [ -n "$1" ]; then hosts=$(awk \'{print $1}\' "$1") '
    '|| { echo "GnuParallelLauncher: cannot read the hostfile $1" >&2; exit 2; }; '
    'elif [ -n "${PBS_NODEFILE-}" ] && [ -r "$PBS_NODEFILE" ]; then hosts=$(awk \'{print $1}\' "$PBS_NODEFILE"); '
    'elif [ -n "${SLURM_JOB_NODELIST-}" ] && command -v scontrol >/dev/null; '
    'then hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST"); '
    'elif [ -n "${LSB_DJOB_HOSTFILE-}" ] && [ -r "$LSB_DJOB_HOSTFILE" ]; then hosts=$(awk \'{print $1}\' "$LSB_DJOB_HOSTFILE"); '
    'elif [ -n "${PE_HOSTFILE-}" ] && [ -r "$PE_HOSTFILE" ]; then hosts=$(awk \'{print $1}\' "$PE_HOSTFILE"); '
    'elif [ -n "${COBALT_NODEFILE-}" ] && [ -r "$COBALT_NODEFILE" ]; then hosts=$(awk \'{print $1}\' "$COBALT_NODEFILE"); '
    "else hosts=; fi; "
    'me=$(hostname); short=$(hostname -s 2>/dev/null || echo "$me"); '
    'logins=$(printf \'%s\\n\' "$hosts" | awk -v a="$me" -v b="$short" '
    '\'NF { h = ($1 == a || $1 == b || $1 == "localhost") ? ":" : $1; if (!seen[h]++) print h }\' | paste -sd, -); '
    '[ -n "$logins" ] || logins=:; '
    "n=$(( $(printf %s \"$logins\" | tr -cd , | wc -c) + 1 )); "
    # Enough job slots per host that every copy starts at once: one each when there are
    # at least as many hosts as copies.
    'exec parallel --will-cite --ungroup --halt soon,fail=1 --jobs $(( ($2 + n - 1) / n )) -S "$logins" '
)

# Runs in each copy: $1 is the command, $2 the rank parallel appends.
_COPY = 'export HPCFUTURES_LAUNCH_RANK="$2" HPCFUTURES_LAUNCH_SIZE={size}; eval "$1"'


@dataclass(frozen=True)
class GnuParallelLauncher(Launcher):
    """Start the command once per node with GNU ``parallel``, which reaches nodes over ssh.

    For clusters without a parallel launcher (or where it cannot start arbitrary commands),
    as long as the job's nodes accept ssh from each other without a password.  The nodes come
    from the ``hostfile`` if one is given, else from the first of these variables that is
    set: ``PBS_NODEFILE``, ``SLURM_JOB_NODELIST`` (expanded with ``scontrol show
    hostnames``), ``LSB_DJOB_HOSTFILE``, ``PE_HOSTFILE``, ``COBALT_NODEFILE`` (the first word
    of each line, each host once); with none of them, the local host.  The host that runs
    the job script is reached without ssh (GNU parallel's ``:``).

    The fragment starts ``nodes_per_block`` copies at once, one per host when there are
    enough hosts (else spread over them).  Each runs ``/bin/bash`` with
    ``HPCFUTURES_LAUNCH_RANK`` and ``HPCFUTURES_LAUNCH_SIZE`` set.  When a copy fails, the
    others keep running; when all have ended, the fragment exits with the first failure's
    status.  Copies on other hosts start in the remote login directory with the remote
    login environment: use absolute paths, and pass variables with ``--env NAME`` in the
    ``overrides`` (or set them in the command).  Needs GNU parallel on the node running the
    job script and perl on the others.

    Attributes:
        hostfile: a file listing the nodes (the first word of each line), or an environment
            variable naming one such as ``"$MY_NODEFILE"``; ``""``: look at the variables above.
        overrides: extra ``parallel`` flags, e.g. ``"--ssh 'ssh -p 2222'"`` or ``"--env PATH"``.
    """

    hostfile: str = ""
    overrides: str = ""

    def __post_init__(self) -> None:
        check_path_or_variable("hostfile", self.hostfile)
        check_flags("overrides", self.overrides)

    @keyword_renamed("tasks_per_node", "max_workers")
    def __call__(self, command: str, max_workers: int, nodes_per_block: int) -> str:
        """Return a bash command line that finds the nodes and runs ``parallel`` on them.

        Raises:
            ConfigurationError: *command* is empty, or a count is not a positive integer.
        """
        check_call(command, max_workers, nodes_per_block)
        copy = shlex.join([BASH, "-c", _COPY.format(size=nodes_per_block), "hpcfutures-copy", command])
        script = _NODES + (self.overrides.strip() + " " if self.overrides.strip() else "")
        script += '"$3" ::: $(seq 0 $(( $2 - 1 )))'
        hostfile = path_or_variable(self.hostfile) if self.hostfile else "''"
        return f"{BASH} -c {shlex.quote(script)} hpcfutures-parallel {hostfile} {nodes_per_block} {shlex.quote(copy)}"
