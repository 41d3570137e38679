"""The HighThroughputExecutor's blocks: watching their jobs, scaling them, tunnels, stopping.

:class:`BlockManager` serves one :class:`~.executor.HighThroughputExecutor` (its
:class:`BlockHost`): its block thread runs :meth:`BlockManager._block_loop`, which asks
the provider about every live block in one call, judges the blocks that ended, and carries
out :func:`hpcfutures.scaling.plan_blocks` (submit, drain or cancel blocks).  It scales every
``block_poll_period``, but asks the provider less often while nothing changes
(:class:`StatusPolls`).  Nothing here runs on the I/O thread: scheduler commands can take a
while.

The block thread alone writes the block-keeping counters (start failures in a row, losses
within :data:`LOSS_WINDOW_SECONDS`); the I/O thread only sets flags on a :class:`_Block`
(``registered``, ``lost``), which the block thread reads on its next round.

When the run is recorded, every change of a block goes to the record (:meth:`BlockManager.record_to`):
its job's state as the provider maps it, the provider's own words for it (``raw_state``: a
cluster scheduler's state and reason), and the executor's reason when the change is its
doing (submitted, a pool connected, drained, cancelled); a poll that finds nothing new
records nothing.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ...errors import BrokenExecutorError, PoolStartError
from ...providers.base import JobState, JobStatus
from ...scaling import BlockView, LossWindow, PollBackoff, plan_blocks

if TYPE_CHECKING:
    from ...monitor.recorder import Recorder
    from ...providers.base import ExecutionProvider

logger = logging.getLogger("hpcfutures.executors.htex.executor")  # one logger for the executor

#: Blocks lost under their tasks, per ``max_blocks``, that the executor replaces within the
#: loss window; one more loss within it breaks the executor.
MAX_BLOCK_REPLACEMENTS = 3
#: The loss window: 10 minutes, or :data:`LOSS_WINDOW_POLLS` rounds of the block thread when
#: that is longer.  10 minutes holds many start-and-die cycles of a block that keeps dying (a
#: queue wait and a pool start each), yet forgets a block lost now and then on an executor
#: that runs for days.  A round sees at most one loss per block, so with a slow
#: ``block_poll_period`` a fixed 10 minutes could hold too few rounds ever to exceed the
#: limit; 60 rounds can exceed it (3 x ``max_blocks``) even at one loss a round, up to
#: ``max_blocks=19``.
LOSS_WINDOW_SECONDS = 600.0
LOSS_WINDOW_POLLS = 60
#: Blocks in a row that end before any pool connects, after which pending tasks fail.
MAX_START_FAILURES = 3
#: While rounds of the block thread keep failing (a scheduler down), one warning per this many
#: seconds; the first failure is logged with its traceback.
FAILURE_LOG_INTERVAL = 60.0
#: While no block changes, the provider is asked about the jobs less and less often, up to
#: once every this many ``block_poll_period``s (16 s by default).  Relative to the period,
#: because the period is the user's word on how fresh the executor's view must be: a fixed
#: cap would sit below a slow period or far above a fast one.  Four doublings (1, 2, 4, 8,
#: 16 periods) cut the status commands of a quiet executor 16-fold, while a block that ends
#: without anything else telling (a queued block that fails while other blocks do the work)
#: is still seen within 16 periods.  submitit waits up to 600 s, but it only watches for
#: results; here a late look delays a replacement block.
POLL_BACKOFF_FACTOR = 16


class _Block:
    __slots__ = (
        "block_id", "job_id", "registered", "ended", "cancelled", "lost", "draining", "submitted",
        "status", "workers", "noticed", "recorded",
    )  # fmt: skip

    def __init__(self, block_id: str, job_id: str):
        self.block_id = block_id
        self.job_id = job_id
        self.registered = False
        self.ended = False
        self.cancelled = False  # we cancelled it
        self.lost = False  # its pool went silent: cancel it (the block thread does)
        self.draining = False  # being scaled in: its pools stop once idle
        self.submitted = time.monotonic()
        self.status: JobStatus | None = None  # the provider's newest word on its job
        self.workers = 0  # workers its pools reported
        self.noticed = False  # the block thread has seen it registered (and reset the start-failure streak)
        self.recorded: tuple[str, str | None] | None = None  # the state and raw state last recorded

    @property
    def state(self) -> str:
        """Its job's state as the provider last said, in :class:`JobState`'s words."""
        return self.status.state.value if self.status is not None else JobState.PENDING.value


@dataclass(frozen=True)
class BlockInfo:
    """A snapshot of one block of a HighThroughputExecutor, for users and tests.

    Attributes:
        block_id: the executor's name for it.
        job_id: the provider's job id.
        state: ``"queued"`` (submitted, no pool connected yet), ``"connected"``,
            ``"draining"`` (being scaled in) or ``"ended"``.
        job: the provider's newest status of the job, if any was asked for yet.
        workers: workers its pools reported when they connected.
    """

    block_id: str
    job_id: str
    state: str
    job: JobStatus | None
    workers: int


class BlockHost(Protocol):
    """What the block manager asks of the executor it serves."""

    def _outstanding(self) -> int:
        """How many tasks are submitted and not finished."""

    def _accepting(self) -> bool:
        """Whether the executor still takes tasks (neither shut down nor broken)."""

    def _shutting_down(self) -> bool:
        """Whether the executor was shut down (block ends are then expected)."""

    def _break(self, error: BaseException) -> None:
        """Break the executor with ``error``: pending tasks fail with it."""

    def _drain(self, block_id: str) -> None:
        """Tell the interchange to give the block no more tasks and stop its pools when idle."""

    def _pool_command(self, block_id: str) -> str:
        """The shell command that runs a pool of the block ``block_id``."""


class BlockManager:
    """The blocks of one HighThroughputExecutor, and the thread that watches and scales them.

    Owns the blocks (under ``_blocks_lock``: the block thread adds, the I/O thread reads), the
    block-keeping counters (block thread only), the pools connected (I/O thread only, through
    the ``pool_*`` event methods), and the SSH tunnel.  Asks its :class:`BlockHost` for the
    rest.
    """

    def __init__(
        self,
        host: BlockHost,
        provider: ExecutionProvider,
        *,
        label: str,
        max_workers: int | None,
        max_idletime: float,
        block_poll_period: float,
    ) -> None:
        self.host = host
        self.provider = provider
        self.label = label
        self.max_workers = max_workers
        self.max_idletime = max_idletime
        self.block_poll_period = block_poll_period
        self._blocks: dict[str, _Block] = {}
        self._blocks_lock = threading.Lock()  # the block thread adds, the I/O thread reads
        self._block_counter = itertools.count()
        self._block_stop = threading.Event()
        self._block_thread: threading.Thread | None = None
        self._start_failures = 0  # blocks in a row that ended before a pool connected; block thread only
        self._losses: LossWindow | None = None  # blocks lost under their tasks; made by the block thread
        #: What the provider said of blocks that ended before any of their pools connected.
        self.block_failures: list[JobStatus] = []
        # The I/O thread's, from the interchange's events and heartbeats:
        self._block_idle: dict[str, float] = {}  # block id -> idle seconds
        self._drained: set[str] = set()  # blocks whose pools all stopped after draining
        self._pools_connected = 0
        #: The pools connected, by pool id: what each said when it registered.
        self.pools: dict[str, dict[str, Any]] = {}
        self._tunnel_port: int | None = None
        self._record: tuple[Recorder, str] | None = None  # the run record, and this executor's name there

    def record_to(self, recorder: Recorder, label: str) -> None:
        """Tell every change of a block from now on to ``recorder``, as the executor ``label``."""
        self._record = (recorder, label)

    def _note(self, block: _Block, reason: str | None = None, state: str | None = None) -> None:
        """Record a block's state if it changed, or if ``reason`` says what the executor did to it."""
        record = self._record
        if record is None:
            return
        state = state or block.state
        raw = (block.status.message or None) if block.status is not None else None
        if reason is None and block.recorded == (state, raw):
            return
        block.recorded = (state, raw)
        record[0].block(record[1], block.block_id, state, time.time(), job_id=block.job_id, raw_state=raw, reason=reason)

    # -- the executor's calls ---------------------------------------------------------------------

    @property
    def tunnel_port(self) -> int | None:
        """The port the SSH hosts forward to the interchange, while a tunnel is open."""
        return self._tunnel_port

    def start_block(self) -> None:
        """Submit one block to the provider.

        Raises:
            Exception: whatever the provider raised (the scheduler refused the job, say).
        """
        block_id = str(next(self._block_counter))
        job_id = self.provider.submit(
            self.host._pool_command(block_id), self.max_workers or 1, f"{self.label}.block-{block_id}"
        )
        block = _Block(block_id, job_id)
        with self._blocks_lock:
            self._blocks[block_id] = block
        self._note(block, "submitted")
        logger.info("%s: started block %s as job %s", self.label, block_id, job_id)

    def start_thread(self) -> None:
        """Start the block thread (see :meth:`_block_loop`)."""
        self._block_thread = threading.Thread(
            target=self._block_loop, name=f"hpcfutures-{self.label}-blocks", daemon=True
        )
        self._block_thread.start()

    def stop_thread(self) -> None:
        """Stop the block thread and wait for it (unless called on it)."""
        self._block_stop.set()
        thread = self._block_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def cancel_all_now(self) -> None:
        """Cancel every block at once (a start that failed half way is being undone)."""
        with self._blocks_lock:
            blocks, self._blocks = list(self._blocks.values()), {}
        if blocks:
            try:
                self.provider.cancel([b.job_id for b in blocks])
            except Exception:  # noqa: BLE001 - undoing a failed start: the first error is the news
                logger.warning("%s: could not cancel the blocks of a failed start", self.label, exc_info=True)

    # -- events, on the I/O thread ----------------------------------------------------------------

    def pool_registered(self, event: dict[str, Any]) -> None:
        """A pool of one of the blocks connected."""
        self._pools_connected += 1
        self.pools[str(event.get("pool"))] = event
        logger.info(
            "%s: pool %s of block %s connected from %s with %s workers",
            self.label, event.get("pool"), event.get("block"), event.get("host"), event.get("workers"),
        )  # fmt: skip
        block = self._blocks.get(str(event.get("block")))
        if block is not None:
            block.registered = True
            block.workers += int(event.get("workers") or 0)

    def block_drained(self, block_id: str) -> None:
        """Every pool of a draining block has stopped."""
        self._drained.add(block_id)
        for pool_id, info in list(self.pools.items()):
            if str(info.get("block")) == block_id:
                del self.pools[pool_id]
                self._pools_connected -= 1

    def pool_lost(self, event: dict[str, Any]) -> None:
        """A pool went silent or its connection closed: its block is ended (by the block thread)."""
        self._pools_connected -= 1
        self.pools.pop(str(event.get("pool")), None)
        logger.warning("worker pool %s lost: %s", event.get("pool"), event.get("reason"))
        block = self._blocks.get(str(event.get("block")))
        if block is not None and not block.ended:
            block.lost = True  # a silent pool may be hung: the block thread ends its job

    def blocks_idle(self, idle: dict[str, float]) -> None:
        """How long each block's pools have been idle, from the interchange's heartbeat."""
        self._block_idle = idle

    @property
    def pools_connected(self) -> int:
        """How many pools are connected now."""
        return self._pools_connected

    def _block_loop(self) -> None:
        """Every ``block_poll_period`` seconds: one round of :meth:`_block_round`.

        Every round scales; the provider is asked about the jobs when :class:`StatusPolls` says
        so: every round after a change, then less and less often while nothing changes, but at
        least every :data:`POLL_BACKOFF_FACTOR` rounds.
        """
        trouble = RoundFailureLog(self.label, self.block_poll_period)
        polls = StatusPolls(self.block_poll_period, POLL_BACKOFF_FACTOR * self.block_poll_period)
        while not self._block_stop.wait(self.block_poll_period):
            self._block_round(trouble, time.monotonic(), polls)

    def _block_round(self, trouble: RoundFailureLog, now: float, polls: StatusPolls | None = None) -> None:
        """Check the provider's jobs, then scale; a failure is logged and the next round retries.

        With ``polls`` the provider is asked about the jobs only when a poll is due (see
        :class:`StatusPolls`); without, in every round.
        """
        try:
            self._check_blocks(now, polls)
            if self.host._accepting() and self._scale() and polls is not None:
                polls.poke()  # a block submitted or cancelled: ask about it in the next round
        except Exception as exc:  # noqa: BLE001 - a failed scheduler call must not end the thread
            if polls is not None:
                polls.poke()  # retry the poll in the next round, whatever the back-off says
            trouble.failed(exc, now)
        else:
            trouble.succeeded(now)

    def _check_blocks(self, now: float, polls: StatusPolls | None = None) -> None:
        """Note connected pools, cancel lost and drained blocks, then ask the provider about the live ones.

        With ``polls``, the provider is asked only when a poll is due or when its answer is
        news: a pool registered or a block was cancelled just now, a block was never asked
        about (just submitted), or tasks wait while no pool is connected (a block failing
        at its start must be seen at once, to fail them).
        """
        with self._blocks_lock:
            live = [b for b in self._blocks.values() if not b.ended]
        urgent = False
        for block in live:
            if block.registered and not block.noticed:  # a pool connected: the streak is over
                block.noticed = True
                self._start_failures = 0
                urgent = True
                workers = f"{block.workers} worker" + ("s" if block.workers != 1 else "")
                self._note(block, f"a pool connected ({workers})", JobState.RUNNING.value)
        drained = self._drained
        to_cancel = [b for b in live if not b.cancelled and (b.lost or (b.draining and b.block_id in drained))]
        if to_cancel:
            for block in to_cancel:
                block.cancelled = True
                self._note(block, "cancelled: its pool was lost" if block.lost else "cancelled: drained")
            self.provider.cancel([b.job_id for b in to_cancel])
            urgent = True
        if not live:
            return
        urgent = (
            urgent
            or any(b.status is None for b in live)
            or (self.host._outstanding() > 0 and not any(b.registered for b in live))
        )
        if polls is not None and not (urgent or polls.due(now)):
            return
        changed = urgent
        for block, status in zip(live, self.provider.status([b.job_id for b in live])):
            changed = changed or block.status is None or block.status.state is not status.state
            block.status = status
            self._note(block)
            if status.state.terminal:
                self._block_ended(block, status, now)
        if polls is not None:
            polls.polled(now, changed)

    def _block_ended(self, block: _Block, status: JobStatus, now: float) -> None:
        """Judge a block whose job ended: expected, worth a warning, or fatal for pending tasks."""
        block.ended = True
        if self.host._shutting_down() or block.draining or (block.cancelled and not block.lost):
            return
        how = status.message or f"ended as {status.state.name.lower()}"
        if status.exit_code is not None and str(status.exit_code) not in how:
            how += f" (exit code {status.exit_code})"
        if not block.registered:
            error = PoolStartError(
                f"worker pool block {block.block_id} (job {block.job_id}) {how} before any pool "
                f"connected. Its stderr ends with:\n{status.stderr_tail}",
                exit_code=status.exit_code,
                stderr_tail=status.stderr_tail,
            )
            self._start_failed(status, error)
            return
        if status.state is JobState.TIMEOUT:
            logger.info("%s: block %s reached its walltime; its tasks were requeued", self.label, block.block_id)
            return
        losses = self._loss_window()
        if losses.record(now):
            self.host._break(
                BrokenExecutorError(
                    f"worker pool block {block.block_id} {how}, after {len(losses) - 1} other blocks had "
                    f"ended under their tasks within {losses.window:.0f} s (at most {losses.limit} are "
                    f"replaced); giving up. Its stderr ends with:\n{status.stderr_tail}"
                )
            )
        else:
            logger.warning("%s: worker pool block %s %s; its tasks were requeued", self.label, block.block_id, how)

    def _loss_window(self) -> LossWindow:
        """The executor's window of block losses (made on first use; see :data:`LOSS_WINDOW_SECONDS`)."""
        if self._losses is None:
            self._losses = LossWindow(
                MAX_BLOCK_REPLACEMENTS * max(1, self.provider.max_blocks),
                max(LOSS_WINDOW_SECONDS, LOSS_WINDOW_POLLS * self.block_poll_period),
            )
        return self._losses

    def _scale(self) -> bool:
        """Carry out :func:`plan_blocks`; return whether a block was submitted or cancelled."""
        provider = self.provider
        with self._blocks_lock:
            live = [b for b in self._blocks.values() if not b.ended]
        now = time.monotonic()
        idle = self._block_idle
        views = [
            BlockView(
                b.block_id,
                b.registered,
                float(idle.get(b.block_id, 0.0)) if b.registered else now - b.submitted,
                b.draining or b.cancelled,
            )
            for b in live
        ]
        plan = plan_blocks(
            self.host._outstanding(),
            self._workers_per_block(live),
            views,
            min_blocks=provider.min_blocks,
            max_blocks=provider.max_blocks,
            parallelism=provider.parallelism,
            max_idletime=self.max_idletime,
        )
        if plan.empty:
            return False
        logger.info("%s: scaling: %s", self.label, plan)
        for _ in range(plan.start):
            try:
                self.start_block()
            except Exception as exc:  # noqa: BLE001 - reported as a failed block
                self.submit_failed(exc)
                break
        by_id = {b.block_id: b for b in live}
        for block_id in plan.drain:
            by_id[block_id].draining = True
            self._note(by_id[block_id], "draining: scaling in")
            self.host._drain(block_id)
        if plan.cancel:
            for block_id in plan.cancel:
                by_id[block_id].cancelled = True
                self._note(by_id[block_id], "cancelled: scaling in")
            provider.cancel([by_id[block_id].job_id for block_id in plan.cancel])
        return bool(plan.start or plan.cancel)

    def submit_failed(self, exc: BaseException) -> None:
        """A block could not be submitted: record it as a failed block (see :meth:`_start_failed`)."""
        status = JobStatus(JobState.FAILED, message=str(exc))
        self._start_failed(status, PoolStartError(f"could not submit a worker pool block: {exc}"))

    def _start_failed(self, status: JobStatus, error: PoolStartError) -> None:
        """Record a block that never ran a pool; fail pending tasks if no other block can run them."""
        self.block_failures.append(status)
        self._start_failures += 1
        with self._blocks_lock:
            others = any(not b.ended for b in self._blocks.values())
        if (not others and self._pools_connected <= 0) or self._start_failures >= MAX_START_FAILURES:
            self.host._break(error)
        else:
            logger.warning("%s", error)

    def _workers_per_block(self, live: list[_Block]) -> int:
        nodes = self.provider.nodes_per_block
        if self.max_workers:
            return self.max_workers * nodes
        known = [b.workers for b in live if b.workers]
        if known:
            return max(known)
        return (self.provider.cores_per_node or 1) * nodes

    def blocks(self) -> list[BlockInfo]:
        """Snapshots of every block this executor started, in order."""
        with self._blocks_lock:
            blocks = list(self._blocks.values())
        out = []
        for b in blocks:
            if b.ended:
                state = "ended"
            elif b.draining:
                state = "draining"
            elif b.registered:
                state = "connected"
            else:
                state = "queued"
            out.append(BlockInfo(b.block_id, b.job_id, state, b.status, b.workers))
        return out

    def open_tunnel(self, pool_port: int) -> None:
        """Forward one port on every SSH host of the provider to the interchange's ``pool_port``."""
        channels = self.provider.tunnel_channels()
        if not channels:  # HtexConfig refuses tunnel=True for such a provider
            raise RuntimeError(f"cannot open a tunnel: {self.provider!r} runs no command over SSH")
        port = 0
        for channel in channels:
            port = channel.forward_remote(port, "127.0.0.1", pool_port)
        self._tunnel_port = port

    def close_tunnel(self) -> None:
        """Cancel the tunnel's forwards, if one is open."""
        if self._tunnel_port is None:
            return
        for channel in self.provider.tunnel_channels():
            try:
                channel.cancel_forward(self._tunnel_port)
            except Exception:  # noqa: BLE001 - the connection may be gone already
                logger.debug("could not cancel the tunnel on %r", channel, exc_info=True)
        self._tunnel_port = None

    def stop_blocks(self, kill: bool) -> None:
        """Let the blocks end on their own for a second (not at all if ``kill``), then cancel the rest."""
        live = [b for b in self._blocks.values() if not b.ended]
        deadline = time.monotonic() + (0.0 if kill else 1.0)
        while live and time.monotonic() < deadline:
            statuses = self.provider.status([b.job_id for b in live])
            for block, status in zip(live, statuses):
                if status.state.terminal:
                    block.status = status
                    self._note(block)
            live = [b for b, s in zip(live, statuses) if not s.state.terminal]
            if live:
                time.sleep(0.02)
        if live:
            for block in live:
                block.cancelled = True
                self._note(block, "cancelled: the executor stopped")
            self.provider.cancel([b.job_id for b in live])
            if self._record is not None:  # what the provider says of them now, for the record
                for block, status in zip(live, self.provider.status([b.job_id for b in live])):
                    block.status = status
                    self._note(block)
        for block in self._blocks.values():
            block.ended = True


class StatusPolls:
    """When the block thread next asks the provider about its jobs (block thread only).

    The thread wakes every ``block_poll_period`` to scale, but polls only when
    :meth:`due`: the delay between polls grows while they see no change
    (:class:`~hpcfutures.scaling.PollBackoff`, from the period up to ``cap``), and drops back
    to the period after a change.  :meth:`BlockManager._check_blocks` also polls at once
    when something happened that the scheduler's answer must follow.
    """

    def __init__(self, period: float, cap: float) -> None:
        self.backoff = PollBackoff(period, cap)
        self.next_poll = -math.inf  # the first round polls
        self.poked = False

    def poke(self) -> None:
        """Make the next round poll: the executor submitted or cancelled a block, or a round failed."""
        self.poked = True

    def due(self, now: float) -> bool:
        """Whether a poll is due at ``now``.

        Rounds come a period apart, so a poll is due in the first round within half a period
        of its time: a round that wakes a hair early does not put it off by a whole period.
        """
        return self.poked or now >= self.next_poll - self.backoff.base / 2

    def polled(self, now: float, changed: bool) -> None:
        """Note a poll at ``now`` that saw a change (or followed an event), or did not."""
        self.poked = False
        self.next_poll = now + self.backoff.next_delay(changed)


class RoundFailureLog:
    """Logs failing rounds of the block thread without flooding the log.

    A scheduler that is down makes every round fail, once per ``block_poll_period``.  The
    first failure is logged with its traceback; while the failures go on, one line at most
    every :data:`FAILURE_LOG_INTERVAL` seconds says so; the first round that works again says
    that too (as a warning, so whoever saw the failures sees their end).  Block thread only.
    """

    def __init__(self, label: str, period: float, interval: float = FAILURE_LOG_INTERVAL) -> None:
        self.label = label
        self.period = period
        self.interval = interval
        self.failures = 0  # failed rounds in a row
        self.since = 0.0  # when the first of them failed
        self.next_warning = 0.0

    def failed(self, exc: BaseException, now: float) -> None:
        """Note a failed round at ``now``: a traceback the first time, then a line per interval."""
        self.failures += 1
        if self.failures == 1:
            self.since = now
            self.next_warning = now + self.interval
            logger.error(
                "%s: managing blocks failed; retrying every %g s (further failures are logged at "
                "most every %g s)", self.label, self.period, self.interval, exc_info=exc,
            )  # fmt: skip
        elif now >= self.next_warning:
            self.next_warning = now + self.interval
            first_line = (str(exc).strip().splitlines() or [""])[0]
            logger.warning(
                "%s: managing blocks still failing after %.0f s (%d rounds): %s: %s",
                self.label, now - self.since, self.failures, type(exc).__name__, first_line,
            )  # fmt: skip

    def succeeded(self, now: float) -> None:
        """Note a round that worked; after failures, say that block management recovered."""
        if self.failures:
            logger.warning(
                "%s: managing blocks works again after %.0f s and %d failed rounds",
                self.label, now - self.since, self.failures,
            )  # fmt: skip
            self.failures = 0
