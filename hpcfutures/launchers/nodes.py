"""Where a block's node list comes from: the batch system's variables, read in pure Python.

An MPI task is started on named nodes of the block it runs in, so the block's lead pool must
know those nodes.  Each batch system says so in its own way; :func:`block_nodes` reads them
all, first found wins:

=========================  ======================================================  =========
variable                   what it holds                                           system
=========================  ======================================================  =========
``HPCFUTURES_NODELIST``    names separated by commas (an override, also for tests)  any
``SLURM_JOB_NODELIST``     a compressed host list such as ``n[1-3,7]``             Slurm
``SLURM_NODELIST``         the same, from older Slurm versions                     Slurm
``PBS_NODEFILE``           a file, one host per line, one line per CPU             PBS/Torque
``LSB_MCPU_HOSTS``         ``"host1 n1 host2 n2 ..."`` (host, slot count)           LSF
``LSB_HOSTS``              ``"host1 host1 host2 ..."`` (one word per slot)          LSF
``PE_HOSTFILE``            a file of ``host slots queue processors`` lines         SGE/UGE
``COBALT_NODEFILE``        a file, one host per line                               Cobalt
=========================  ======================================================  =========

Slurm's compressed lists are expanded here (:func:`expand_hostlist`) rather than with
``scontrol show hostnames``, because ``scontrol`` is not on PATH inside jobs on some sites.
``HPCFUTURES_NODELIST`` is read the same way, so it may use Slurm's ranges too (``n[1-4]``).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterable, Mapping

from ..errors import ConfigurationError

#: The variables :func:`block_nodes` reads, in the order it tries them.
NODE_VARIABLES = (
    "HPCFUTURES_NODELIST",
    "SLURM_JOB_NODELIST",
    "SLURM_NODELIST",
    "PBS_NODEFILE",
    "LSB_MCPU_HOSTS",
    "LSB_HOSTS",
    "PE_HOSTFILE",
    "COBALT_NODEFILE",
)

#: More names than any allocation has: a bigger expansion is a typo such as ``n[1-1000000000]``.
MAX_HOSTLIST_NAMES = 1 << 20

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_hostlist(text: str) -> list[str]:
    """Return the host names of a Slurm host list expression, in order, duplicates kept.

    Understands what Slurm writes into ``SLURM_JOB_NODELIST``: names separated by commas
    (or whitespace), each with any number of bracket groups of numbers and ranges, as in
    ``"n[1-3,7],gpu[01-02]"`` or ``"rack[1-2]-n[1-2]"``.  A range is zero-padded to the
    width of its first number (``[08-11]`` gives ``08 09 10 11``; ``[9-11]`` gives
    ``9 10 11``).  Names come in the order ``scontrol show hostnames`` prints them, which
    this replaces inside jobs where ``scontrol`` is not available: with two bracket groups
    the leftmost varies slowest; with more, Slurm varies the last group fastest, then the
    first, the second, and so on (``a[1-2]b[1-2]c[1-2]`` starts ``a1b1c1 a1b1c2 a2b1c1``).
    Text after the last bracket group (``n[1-2]-ib``) is accepted too, although Slurm 22.05
    rejects it.

    Raises:
        ConfigurationError: unbalanced brackets, an empty or descending range, a range of
            something other than numbers, or an expansion of more than
            :data:`MAX_HOSTLIST_NAMES` names.
    """
    if not isinstance(text, str):
        raise ConfigurationError(f"a host list must be a string such as 'n[1-3],m1', got {text!r}")
    names: list[str] = []
    for item in _split_top_level(text):
        for name in _expand_item(item, text):
            names.append(name)
            if len(names) > MAX_HOSTLIST_NAMES:
                raise ConfigurationError(
                    f"host list {text!r} expands to more than {MAX_HOSTLIST_NAMES} names; check its ranges"
                )
    return names


def _split_top_level(text: str) -> list[str]:
    """Split *text* at commas and whitespace outside brackets; drop empty items."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "[":
            if depth:
                raise ConfigurationError(f"host list {text!r} has a '[' inside brackets")
            depth = 1
        elif char == "]":
            if not depth:
                raise ConfigurationError(f"host list {text!r} has a ']' without its '['")
            depth = 0
        elif depth == 0 and (char == "," or char.isspace()):
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    if depth:
        raise ConfigurationError(f"host list {text!r} has a '[' without its ']'")
    items.append("".join(current))
    return [item for item in items if item]


def _expand_item(item: str, text: str) -> Iterable[str]:
    """Expand one name of a host list, whose brackets are known to be balanced."""
    # re.split with a group alternates literal text and bracket contents: lit, group, lit, ...
    parts = re.split(r"\[([^\]]*)\]", item)
    literals = parts[0::2]
    groups = [_expand_ranges(group, text) for group in parts[1::2]]
    # Slurm's order (hostlist.c expands the last group innermost, then recurses leftwards
    # from the group before it): the last group varies fastest, and of the others the further
    # right a group is, the slower it varies.  With two groups: the leftmost is slowest.
    order = [*range(len(groups) - 2, -1, -1), len(groups) - 1] if groups else []
    for values in itertools.product(*(groups[i] for i in order)):
        chosen = dict(zip(order, values))
        yield literals[0] + "".join(chosen[i] + literals[i + 1] for i in range(len(groups)))


def _expand_ranges(group: str, text: str) -> list[str]:
    """Expand the inside of one bracket group, such as ``1-3,07``."""
    numbers: list[str] = []
    for piece in group.split(","):
        match = _RANGE.match(piece.strip())
        if match is None:
            raise ConfigurationError(
                f"host list {text!r} has the range {piece!r} in [{group}]; a range is a number or "
                "two numbers joined by '-', such as 7 or 01-12"
            )
        first, last = match.group(1), match.group(2) or match.group(1)
        low, high = int(first), int(last)
        if high < low:
            raise ConfigurationError(f"host list {text!r} has the descending range {piece!r} in [{group}]")
        if high - low >= MAX_HOSTLIST_NAMES:
            raise ConfigurationError(
                f"host list {text!r} expands to more than {MAX_HOSTLIST_NAMES} names; check its ranges"
            )
        width = len(first)
        numbers.extend(str(n).zfill(width) for n in range(low, high + 1))
    return numbers


def _unique(names: Iterable[str]) -> list[str]:
    """Return *names* without duplicates, each where it first appears."""
    return list(dict.fromkeys(names))


def _read_lines(variable: str, path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as exc:
        raise ConfigurationError(
            f"{variable} names the file {path!r}, which cannot be read ({exc.strerror or exc}); "
            f"unset {variable} or set HPCFUTURES_NODELIST to the nodes"
        ) from None


def _from_comma_list(variable: str, value: str) -> list[str]:
    return expand_hostlist(value)


def _from_host_file(variable: str, value: str) -> list[str]:
    return [line.split()[0] for line in _read_lines(variable, value)]


def _from_lsf_pairs(variable: str, value: str) -> list[str]:
    words = value.split()
    if len(words) % 2 or not all(count.isdigit() for count in words[1::2]):
        raise ConfigurationError(
            f"{variable} must hold pairs of a host and its slot count ('host1 4 host2 4'), got {value!r}"
        )
    return words[0::2]


def _from_words(variable: str, value: str) -> list[str]:
    return value.split()


_READERS: dict[str, Callable[[str, str], list[str]]] = {
    "HPCFUTURES_NODELIST": _from_comma_list,
    "SLURM_JOB_NODELIST": _from_comma_list,
    "SLURM_NODELIST": _from_comma_list,
    "PBS_NODEFILE": _from_host_file,
    "LSB_MCPU_HOSTS": _from_lsf_pairs,
    "LSB_HOSTS": _from_words,
    "PE_HOSTFILE": _from_host_file,
    "COBALT_NODEFILE": _from_host_file,
}


def node_source(environ: Mapping[str, str] | None = None) -> str | None:
    """Return the name of the variable :func:`block_nodes` reads its nodes from, or None.

    That is the first of :data:`NODE_VARIABLES` set to something other than blanks in
    *environ* (default ``os.environ``).  For diagnostics: a pool can report where its node
    list came from, and an error can say which variable held a bad value.
    """
    env = os.environ if environ is None else environ
    for variable in NODE_VARIABLES:
        if env.get(variable, "").strip():
            return variable
    return None


def block_nodes(environ: Mapping[str, str] | None = None) -> list[str]:
    """Return the names of the nodes of the allocation this process runs in, in order, once each.

    Reads the first of :data:`NODE_VARIABLES` that is set and not blank, in *environ*
    (default ``os.environ``): ``HPCFUTURES_NODELIST`` first, so that a user or a test can
    override what the batch system says.  Host files (PBS, SGE, Cobalt) list a host once per
    CPU or slot, and Slurm and ``HPCFUTURES_NODELIST`` may be written with repetitions, so
    duplicates are dropped, keeping each name where it first appears.

    There is deliberately no fallback to this machine's own name: a block that cannot find
    its nodes would otherwise run every MPI task on its first node and look as if it worked.
    Outside a batch job, set ``HPCFUTURES_NODELIST`` (to ``localhost``, for instance).

    Raises:
        ConfigurationError: none of the variables is set; a host file cannot be read or
            lists no host; or a value cannot be parsed.  The message names the variable.
    """
    env = os.environ if environ is None else environ
    variable = node_source(env)
    if variable is None:
        raise ConfigurationError(
            "cannot tell which nodes this block holds: none of "
            f"{', '.join(NODE_VARIABLES)} is set (is this process running inside a batch job?); "
            "set HPCFUTURES_NODELIST to the node names, separated by commas"
        )
    value = env[variable].strip()
    nodes = _unique(_READERS[variable](variable, value))
    if not nodes:
        raise ConfigurationError(f"{variable} ({value!r}) lists no host")
    return nodes
