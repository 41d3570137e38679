"""SingleNodeLauncher: several copies of the command on the node the job script runs on."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from .._validate import check_bool, keyword_renamed
from ._fragment import BASH, check_call
from .base import Launcher

# Runs "$1" (the command) $2 times in the background, each in its own bash with
# HPCFUTURES_LAUNCH_RANK/SIZE set, forwards TERM/INT/HUP to them, and waits for every copy.
# $3 is "any" (fail if any copy failed) or "all" (fail only if every copy failed); the exit
# status is then that of the lowest-ranked failed copy.
_SCRIPT = (
    "pids=(); "
    "trap 'kill -TERM \"${pids[@]}\" 2>/dev/null' TERM INT HUP; "
    "for ((rank = 0; rank < $2; rank++)); do "
    "HPCFUTURES_LAUNCH_RANK=$rank HPCFUTURES_LAUNCH_SIZE=$2 \"$BASH\" -c \"$1\" & pids+=(\"$!\"); "
    "done; "
    "first=0; failed=0; "
    "for pid in \"${pids[@]}\"; do "
    # wait returns early (status > 128) when a trapped signal arrives: wait again while the
    # copy is alive.  A pid reused meanwhile is no child, so wait then returns 127 and ends it.
    "wait \"$pid\"; rc=$?; "
    "while [ \"$rc\" -gt 128 ] && kill -0 \"$pid\" 2>/dev/null; do wait \"$pid\"; rc=$?; done; "
    "if [ \"$rc\" -ne 0 ]; then failed=$((failed + 1)); [ \"$first\" -ne 0 ] || first=$rc; fi; "
    "done; "
    "if [ \"$failed\" -gt 0 ] && { [ \"$3\" = any ] || [ \"$failed\" -eq \"$2\" ]; }; then exit \"$first\"; fi; "
    "exit 0"
)


@dataclass(frozen=True)
class SingleNodeLauncher(Launcher):
    """Start copies of the command on the node where the job script runs, and wait for all.

    Use it when a block's processes must all run on its first node: a big shared-memory node
    requested as one block, a scheduler that runs the job script on one node without a
    parallel launcher, or a test.  It starts ``nodes_per_block`` copies (one pool per node
    the block asked for), or ``max_workers * nodes_per_block`` with ``per_task=True``,
    for commands that are one worker each rather than a pool.

    Each copy runs in its own ``/bin/bash`` with ``HPCFUTURES_LAUNCH_RANK`` (0, 1, …) and
    ``HPCFUTURES_LAUNCH_SIZE`` (the number of copies) in its environment.  The fragment waits
    for every copy; TERM, INT and HUP sent to it are passed on to the copies.

    Attributes:
        fail_on_any: True (the default): exit non-zero when any copy failed.  False: exit
            non-zero only when every copy failed.  The status is the lowest-ranked failed
            copy's exit status (128 + N for a copy killed by signal N).
        per_task: start ``max_workers`` copies per node instead of one: one per worker the
            executor asked for, for commands that run a single worker each.
    """

    fail_on_any: bool = True
    per_task: bool = False

    def __post_init__(self) -> None:
        check_bool("fail_on_any", self.fail_on_any)
        check_bool("per_task", self.per_task)

    @keyword_renamed("tasks_per_node", "max_workers")
    def __call__(self, command: str, max_workers: int, nodes_per_block: int) -> str:
        """Return a bash command line that runs the copies and exits with their outcome.

        Raises:
            ConfigurationError: *command* is empty, or a count is not a positive integer.
        """
        check_call(command, max_workers, nodes_per_block)
        copies = nodes_per_block * (max_workers if self.per_task else 1)
        policy = "any" if self.fail_on_any else "all"
        return shlex.join([BASH, "-c", _SCRIPT, "hpcfutures-single-node", command, str(copies), policy])
