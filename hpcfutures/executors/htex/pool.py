"""The worker pool manager: one per node, between the interchange and the worker processes.

It registers with the interchange (versions, worker count), forks its workers, and then
routes: task batches down to workers, result batches up.  It reads only packed headers and
forwards payload frames untouched.  Each worker claims a task on a board shared with the
manager before it begins it, and keeps its unsent results there (see :mod:`.board`), so the
manager reports which tasks began (batched with results, for ``running()``), cancels the
ones no worker has begun, and knows what a dead worker was doing.  It owns the failure
handling that needs to be close to the workers: a dead worker is seen at once through its
pidfd (else its sentinel), every result it finished is taken (from its pipe, then its board), the task it
was running is charged a loss (and fails after too many), its other tasks are requeued
uncharged, and it is replaced; a task past its walltime has its worker's whole process
group killed.  A lost worker whose task is requeued is told upwards as an EVENT, for the
run record; results the manager makes itself (a lost worker, a walltime) carry what it knows
of the task's run, as its workers' results do.  When the driver asks for node samples, every
``sample_interval`` seconds a HEARTBEAT carries one (load, CPU and memory use, busy workers).

The manager never has a thread but its main one, so that every fork of a worker, including
a replacement's while tasks run, copies no lock another thread holds.  So it holds no ZeroMQ
socket (whose context runs I/O threads): a pool on the interchange's node talks to it over
a Unix stream socket, and a remote pool through a relay process that holds the CurveZMQ
socket (see :mod:`.relay`); the manager reads either as a :class:`.stream.StreamConnection`.

Run as ``python -m hpcfutures.executors.htex.pool --addr tcp://HOST:PORT --keys FILE ...`` (see
:class:`.components.PoolArgs`).
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import multiprocessing
import os
import select
import signal
import socket
import sys
import time
import uuid
from collections import deque
from multiprocessing.process import BaseProcess
from typing import Any

from ...errors import ConfigurationError, TaskTimeoutError, WorkerLostError
from ...exits import describe_exit, exit_signal
from ...launchers.nodes import block_nodes
from ...serialize import dumps
from . import memlimit, security
from . import protocol as P
from .board import WorkerBoard
from .components import PoolArgs, setup_logging
from .dealing import pool_credit, worker_depth
from .memlimit import MemoryCage
from .pipes import Receiver, Sender, pipe_pair, watch_room
from .relay import start_relay
from .slots import Allocation, Allocator, Need, detect_shape, gpus_in_mask, plan_workers, worker_environment
from .stream import SCHEME, StreamConnection
from .worker import worker_main

logger = logging.getLogger(__name__)

BATCH_LIMIT = 256
#: How soon after tasks may have begun without a word (sent to an idle worker, or queued
#: behind a result) the manager looks at the claim boards to report them started.
STARTED_DELAY = 0.002
#: How long a closing manager waits for its relay to hand the interchange its last messages.
RELAY_EXIT_SECONDS = 2.0


def block_end_in() -> float | None:
    """Seconds until this pool's block must end, from ``HPCFUTURES_BLOCK_END`` (epoch seconds).

    Job scripts export it from their walltime; the interchange then gives this pool no task
    it could not finish.  None when unset or unreadable.
    """
    value = os.environ.get("HPCFUTURES_BLOCK_END", "")
    try:
        return float(value) - time.time() if value else None
    except ValueError:
        return None


class _Worker:
    __slots__ = (
        "rank", "process", "sender", "receiver", "board", "outstanding", "sent", "reported", "head_seen",
        "cancelled", "ready", "deadline", "walltime", "allocation", "cage", "watch",
    )  # fmt: skip

    def __init__(self, rank: int, process: Any, sender: Sender, receiver: Receiver, board: WorkerBoard):
        self.rank = rank
        self.process = process
        self.sender = sender  # tasks down; never blocks, queues what the pipe cannot take
        self.receiver = receiver  # results up
        self.board = board
        # Tasks sent and not answered, in the order the worker runs them:
        # (task, queue sequence number, ordinal on the claim board).
        self.outstanding: deque[tuple[P.Item, int, int]] = deque()
        self.sent = 0  # ordinal of the next task sent
        self.reported = 0  # tasks with lower ordinals were reported started (or finished)
        self.head_seen = -1  # ordinal of the first task held, when it was last seen begun
        self.cancelled: set[int] = set()  # ids of tasks cancelled on the board, not yet skipped
        self.ready = False
        self.deadline: float | None = None  # set while it runs a task with a walltime
        self.allocation: Allocation | None = None  # set while it runs a task with resources
        self.cage: MemoryCage | None = None  # its memory cgroup, with enforce_memory
        self.walltime = 0.0
        # What tells of its death: a pidfd, readable once it has exited, even while a process
        # it forked holds its multiprocessing sentinel open; else that sentinel.
        try:
            self.watch: int = os.pidfd_open(process.pid)
        except (AttributeError, OSError):
            self.watch = process.sentinel

    def exited(self) -> None:
        """Wait for the process once its death was seen: without waiting on the sentinel
        (which a process the task forked may hold open) when a pidfd told of it."""
        if self.watch != self.process.sentinel:
            self.process.exitcode  # noqa: B018 - reaps it (waitpid, not waiting: it has exited)
        else:
            self.process.join(timeout=5)


class PoolManager:
    """Serves one node's workers for one interchange.  See the module docstring."""

    def __init__(self, args: PoolArgs):
        self.args = args
        self.shape = detect_shape(
            cpus=args.cpus or None,
            memory_gb=args.memory_gb or None,
            accelerators=args.accelerators,
            tasks_per_gpu=args.tasks_per_accelerator,
            host=socket.gethostname(),
        )
        if args.mpi_flavour:  # the lead pool of an MPI block: it hands out the block's nodes
            from ...launchers.mpi_prefix import MPISpec, detect_flavour, mpi_prefix  # only MPI blocks need it

            nodes = tuple(block_nodes())
            if args.mpi_flavour == "auto":
                args = self.args = dataclasses.replace(args, mpi_flavour=detect_flavour(args.mpi_executable or "mpiexec"))
            # An unknown flavour fails here, not per task.
            mpi_prefix(args.mpi_flavour, MPISpec(nodes[:1], 1), executable=args.mpi_executable or None)
            self.shape = dataclasses.replace(self.shape, nodes=nodes)
        # What each worker holds for its life (CPUs it is pinned to, its accelerator), by rank.
        self.plans = plan_workers(
            self.shape,
            max_workers=args.max_workers or None,
            cores_per_worker=args.cores_per_worker or None,
            mem_per_worker=args.mem_per_worker or None,
            cpu_affinity=args.cpu_affinity,
        )
        self.workers_wanted = len(self.plans)
        # The CPUs, memory and accelerators tasks with resources hold (the interchange sends
        # such a task only when it fits; this checks again and picks the CPU ids).
        self.allocator = Allocator(self.shape)
        self.held_cores = 0  # cores those tasks hold now
        # Default tasks may keep this many workers busy besides them.
        self.capacity = max(self.shape.cores, self.workers_wanted)
        if args.enforce_memory and (why := memlimit.unavailable()) is not None:
            raise ConfigurationError(why)
        self.cages_made = 0
        self.pool_id = args.pool_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.workers: dict[int, _Worker] = {}  # by rank
        self.by_sentinel: dict[int, _Worker] = {}
        self.by_result_fd: dict[int, _Worker] = {}
        self.by_task_fd: dict[int, _Worker] = {}
        self.queue: list[tuple[int, int, P.Item]] = []  # (-priority, sequence number, task)
        self.seq = 0
        self.received = 0
        self.credit_sent = 0
        self.runtime_ewma = 0.0
        self.depth = 1  # tasks per worker; grows once results show the tasks are short
        self.lost_task_retries = 2
        self.heartbeat_period = args.heartbeat_period
        self.heartbeat_threshold = args.heartbeat_threshold
        self.config_frames: list[Any] = [P.CONFIG, b""]
        self.tag = P.pool_tag(self.pool_id)
        self.sample_interval = 0.0  # seconds between node samples; 0: the driver wants none
        self.next_sample = 0.0
        self.out_meta: list[bytes] = []
        self.out_mains: list[Any] = []
        self.out_extra: list[Any] = []
        self.running = True
        self.started_check: float | None = None  # when to look for tasks begun unreported
        self.env_base = {
            "HPCFUTURES_POOL_ID": self.pool_id,
            "HPCFUTURES_BLOCK_ID": str(args.block_id),
            "HPCFUTURES_WORKER_COUNT": str(self.workers_wanted),
        }
        self.fork = multiprocessing.get_context("fork")
        # Worker pipes and sentinels, and the interchange's connection once it is made.
        self.poller = select.poll()
        self.ix: StreamConnection  # the interchange's connection (a remote pool's: to its relay)
        self.link_fds: list[int] = []  # its fd (and the relay's sentinel): no worker may hold them
        self.relay: BaseProcess | None = None  # a remote pool's relay to the interchange
        # The driver's express socket, its token and who the workers are, for a local pool's
        # workers (set once the keys are read).
        self.express: tuple[str, bytes, dict[str, Any]] | None = None

    # -- workers ---------------------------------------------------------------------------

    def start_worker(self, rank: int) -> None:
        plan = self.plans[rank]
        env = dict(self.env_base, HPCFUTURES_WORKER_RANK=str(rank), **worker_environment(plan))
        task_read, task_write = pipe_pair()
        result_read, result_write = pipe_pair()
        board = WorkerBoard()
        # The child keeps only its own ends: with the others closed there, a pipe's reader
        # sees end-of-file when its one writer goes.  Nor does it keep the interchange's
        # connection (or the relay's sentinel): their peers must see end-of-file when this
        # manager goes.
        ours = [fd for w in self.workers.values() for fd in (w.sender.fd, w.receiver.fd)]
        ours += self.link_fds
        # This process has no thread but this one (a remote pool's ZeroMQ socket lives in its
        # relay), so the fork copies no lock another thread holds.
        process = self.fork.Process(
            target=worker_main,
            args=(
                rank,
                task_read,
                result_write,
                board,
                [task_write, result_read, *ours],
                env,
                os.getpid(),
                self.args.shm_dir,
                plan.cpus,
                self.tag,
                self.express,
            ),
            name=f"hpcfutures-worker-{rank}",
            daemon=True,
        )
        try:
            process.start()
        finally:
            os.close(task_read)
            os.close(result_write)
        worker = _Worker(rank, process, Sender(task_write), Receiver(result_read), board)
        if self.args.enforce_memory:
            self.cages_made += 1
            worker.cage = MemoryCage(f"hpcfutures-{os.getpid()}-w{rank}-{self.cages_made}")
            assert process.pid is not None  # started
            worker.cage.add(process.pid)
        self.workers[rank] = worker
        self.by_sentinel[worker.watch] = worker
        self.by_result_fd[result_read] = worker
        self.by_task_fd[task_write] = worker
        self.poller.register(worker.watch, select.POLLIN)
        self.poller.register(result_read, select.POLLIN)

    def forget_worker(self, worker: _Worker) -> None:
        if self.workers.get(worker.rank) is worker:
            del self.workers[worker.rank]
        self.by_sentinel.pop(worker.watch, None)
        self.by_result_fd.pop(worker.receiver.fd, None)
        self.by_task_fd.pop(worker.sender.fd, None)
        for fd in (worker.watch, worker.receiver.fd, worker.sender.fd):
            try:
                self.poller.unregister(fd)
            except KeyError:  # a task pipe is registered only while it has a backlog
                pass
        closing = [worker.receiver.fd, worker.sender.fd]
        if worker.watch != worker.process.sentinel:
            closing.append(worker.watch)  # a pidfd of ours (the sentinel is multiprocessing's)
        for fd in closing:
            try:
                os.close(fd)
            except OSError:
                pass

    def send_to_worker(self, worker: _Worker, frames: list[Any]) -> None:
        """Send a message down a worker's pipe; what does not fit goes when the pipe drains."""
        try:
            worker.sender.send(frames)
        except OSError:  # the worker is gone: its sentinel fires and its tasks are requeued
            return
        watch_room(self.poller, worker.sender.fd, worker.sender, pollout=select.POLLOUT)

    def drain_pipe(self, worker: _Worker) -> None:
        """Write what waits for a worker's pipe, now that it has room."""
        try:
            worker.sender.flush()
        except OSError:  # the worker is gone: what waited for it is dropped with it
            worker.sender.pending.clear()
        watch_room(self.poller, worker.sender.fd, worker.sender, pollout=select.POLLOUT)

    def read_worker(self, worker: _Worker) -> None:
        """Handle every whole message waiting in a worker's result pipe."""
        for msg in worker.receiver.read():
            self.on_worker(worker, msg)

    def kill_worker(self, worker: _Worker) -> None:
        for kill in (os.killpg, os.kill):
            try:
                kill(worker.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        worker.process.join(timeout=5)

    def worker_died(self, worker: _Worker) -> None:
        worker.exited()
        for msg in worker.receiver.drain():  # every result it sent before it died counts
            self.on_worker(worker, msg)
        self.take_unsent(worker)
        self.forget_worker(worker)
        how = describe_exit(worker.process.exitcode)
        logger.warning("worker %s %s", worker.rank, how)
        if not worker.ready:
            self.report_broken(f"worker {worker.rank} of pool {self.pool_id} {how} before it was ready")
            return
        self.requeue(worker, how, worker.process.exitcode)
        express = worker.board.express_task()
        if express:  # the driver sent it that task: the driver requeues it, on this word
            self.tell_worker_lost(express, worker, how, worker.process.exitcode, express=True)
        if self.running:
            self.start_worker(worker.rank)

    def take_unsent(self, worker: _Worker) -> None:
        """Take the results a dead worker finished but had not sent, from its board's journal.

        Results it sent just before it died may still be in the journal too: only those of
        tasks still outstanding count.
        """
        metas, pickles = worker.board.unsent()
        offset = 0
        for fields in P.RESULT_META.iter_unpack(metas):
            size = fields[-2]
            if offset + size > len(pickles):
                break  # it died while writing this one
            if worker.outstanding and worker.outstanding[0][0][0][0] == fields[0]:
                self.on_worker(worker, [memoryview(P.RESULTS), memoryview(P.RESULT_META.pack(*fields)),
                                        memoryview(pickles)[offset : offset + size]])
            offset += size

    def requeue(self, worker: _Worker, how: str, exitcode: int | None) -> None:
        """Put a lost worker's tasks back once its results are read.

        The task it had claimed and not answered is the one it was running: that one is
        charged a loss.  Those it had not claimed are requeued uncharged, and those
        cancelled on its board are dropped (the driver was told they were cancelled).
        """
        claimed = worker.board.claimed_before_death()
        out_of_memory = (
            worker.cage is not None and worker.allocation is not None and worker.cage.killed_since_limit()
        )
        memory = worker.allocation.memory_gb if worker.allocation is not None else 0.0
        if worker.allocation is not None:
            self.release(worker)
        if worker.cage is not None:
            worker.cage.remove()
        while worker.outstanding:
            (fields, main, oob), seq, ordinal = worker.outstanding.popleft()
            task_id, priority, lost = fields[P.T_ID], fields[P.T_PRIORITY], fields[P.T_LOST]
            if task_id in worker.cancelled:
                continue
            if ordinal < claimed and out_of_memory:  # its own doing: running it again would fail again
                self.add_failure(
                    task_id,
                    WorkerLostError(
                        f"task {task_id}: its worker was killed by the out-of-memory killer: the task "
                        f"used more than its Resources(memory_gb={memory:g}); it is not retried",
                        exit_code=exitcode,
                        signal_name=exit_signal(exitcode),
                    ),
                    worker,
                    lost,
                )
                continue
            if ordinal < claimed:
                lost += 1
                if lost > self.lost_task_retries:
                    error = WorkerLostError(
                        f"task {task_id}: its worker {how}, {lost} time(s); it is not retried again",
                        exit_code=exitcode,
                        signal_name=exit_signal(exitcode),
                    )
                    self.add_failure(task_id, error, worker, lost)
                    continue
                self.tell_worker_lost(task_id, worker, how, exitcode)
            heapq.heappush(
                self.queue, (-priority, seq, ((*fields[: P.T_LOST], lost, *fields[P.T_LOST + 1 :]), main, oob))
            )

    def release(self, worker: _Worker) -> None:
        """Give back what the task with resources on ``worker`` held (it ended, or the worker died)."""
        allocation = worker.allocation
        assert allocation is not None
        worker.allocation = None
        self.allocator.give_back(allocation)
        self.held_cores -= len(allocation.cpus)
        if worker.cage is not None and allocation.memory_gb and worker.process.is_alive():
            worker.cage.limit(None)

    def add_failure(
        self, task_id: int, error: BaseException, worker: _Worker, lost: int, started: float = 0.0, elapsed: float = 0.0
    ) -> None:
        """Fail a task that ``worker`` ran (``started`` and ran ``elapsed`` seconds, if known)."""
        frames = dumps((error, ""))
        self.out_meta.append(
            P.result_meta(
                task_id, P.FAILED, len(frames[0]), len(frames) - 1, elapsed=elapsed, dispatched=started,
                started=started, tag=self.tag, pid=worker.process.pid or 0, worker=worker.rank, lost=lost,
            )  # fmt: skip
        )
        self.out_mains.append(frames[0])
        self.out_extra.extend(frames[1:])

    def tell_worker_lost(
        self, task_id: int, worker: _Worker, how: str, exitcode: int | None, *, express: bool = False
    ) -> None:
        """Tell the interchange that ``worker`` died under task ``task_id``, which is requeued
        (by this manager; by the driver if it was an ``express`` task)."""
        event = {
            "event": "worker_lost",
            "task": task_id,
            "worker": worker.rank,
            "pid": worker.process.pid or 0,
            "exit_code": exitcode,
            "reason": f"worker {worker.rank} {how}"[:1000],
        }
        if express:
            event["express"] = True
        self.send_up(P.EVENT, json.dumps(event).encode())

    def check_walltimes(self, now: float) -> float | None:
        """Kill workers whose task ran past its walltime; return the next deadline."""
        soonest = None
        for worker in list(self.workers.values()):
            if worker.deadline is None:
                continue
            if now >= worker.deadline:
                (fields, _main, _oob), _seq, _ordinal = worker.outstanding.popleft()
                self.kill_worker(worker)
                self.forget_worker(worker)
                ran = now - (worker.deadline - worker.walltime)  # since it was sent, alone
                self.add_failure(
                    fields[0],
                    TaskTimeoutError(
                        f"task {fields[0]} ran past its walltime of {worker.walltime:g} s and was killed"
                    ),
                    worker,
                    fields[P.T_LOST],
                    time.time() - ran,
                    ran,
                )
                self.requeue(worker, "was killed", None)
                if self.running:
                    self.start_worker(worker.rank)
            elif soonest is None or worker.deadline < soonest:
                soonest = worker.deadline
        return soonest

    # -- messages ------------------------------------------------------------------------

    def credit(self) -> int:
        return pool_credit(
            sent_before=self.credit_sent,
            received=self.received,
            held=len(self.queue) + sum(len(w.outstanding) for w in self.workers.values()),
            workers=len(self.workers),
            depth=self.depth,
            prefetch=self.args.prefetch,
        )

    def send_up(self, kind: bytes, *frames: Any) -> None:
        credit = self.credit()
        self.credit_sent = credit
        try:
            self.ix.send_multipart([kind, P.CREDIT.pack(credit), *frames], copy=False)
        except OSError:  # a local connection closed: the interchange is gone
            self.running = False
            self.exit_code = 4

    def started(self) -> bytes:
        """The packed ids of tasks that workers began since the last report."""
        ids = []
        for worker in self.workers.values():
            if not worker.outstanding:
                continue
            claimed = worker.board.claimed()
            if claimed is None or claimed <= worker.reported:
                continue
            reported = worker.reported
            for (fields, _main, _oob), _seq, ordinal in worker.outstanding:
                if ordinal >= claimed:
                    break
                if ordinal >= reported and fields[0] not in worker.cancelled:
                    ids.append(fields[0])
            worker.reported = claimed
        return P.pack_ids(ids) if ids else b""

    def cancel(self, request: bytes, ids: set[int] | None) -> None:
        """Cancel the given tasks (or all) that no worker has begun; tell the interchange which.

        Tasks still in this pool's queue are dropped; tasks a worker holds are cancelled on
        its claim board, which the worker reads before it begins each task.
        """
        cancelled = P.take_queued(self.queue, ids)
        for worker in self.workers.values():
            wanted = {
                ordinal: fields[0]
                for (fields, _main, _oob), _seq, ordinal in worker.outstanding
                if (ids is None or fields[0] in ids) and fields[0] not in worker.cancelled
            }
            if wanted:
                for ordinal in worker.board.cancel(wanted):
                    worker.cancelled.add(wanted[ordinal])
                    cancelled.append(wanted[ordinal])
        self.send_up(P.CANCEL_REPLY, request, P.pack_ids(cancelled))

    def flush_up(self, stream: StreamConnection) -> None:
        try:
            stream.flush()
        except OSError:
            self.running = False
            self.exit_code = 4

    def report_broken(self, reason: str, frames: list[Any] | None = None) -> None:
        """Tell the interchange this pool cannot run tasks, then stop."""
        logger.error("%s", reason)
        print(reason, file=sys.stderr, flush=True)
        payload = frames if frames is not None else dumps((RuntimeError(reason), ""))
        self.send_up(P.INIT_FAILED, json.dumps({"reason": reason}).encode(), *payload)
        self.running = False
        self.exit_code = 3

    def on_interchange(self, msg: list[Any]) -> None:
        kind = bytes(msg[0])
        if kind == P.TASKS:
            seq = self.seq
            queue = self.queue
            items = P.split(P.TASK_META, bytes(msg[1]), memoryview(msg[2]), msg[3:])
            for item in items:
                seq += 1
                heapq.heappush(queue, (-item[0][1], seq, item))
            self.received += len(items)
            self.seq = seq
        elif kind == P.HEARTBEAT:
            pass
        elif kind == P.CANCEL:
            self.cancel(bytes(msg[1]), set(P.unpack_ids(bytes(msg[2]))))
        elif kind == P.CANCEL_QUEUED:
            self.cancel(bytes(msg[1]), None)
        elif kind == P.SHUTDOWN:
            self.running = False

    def on_worker(self, worker: _Worker, msg: list[memoryview]) -> None:
        kind = msg[0].tobytes()
        if kind == P.RESULTS:
            meta = msg[1].tobytes()
            self.out_meta.append(meta)
            self.out_mains.append(msg[2])
            if len(msg) > 3:
                self.out_extra.extend(msg[3:])
            outstanding = worker.outstanding
            total = 0.0
            n = 0
            for fields in P.RESULT_META.iter_unpack(meta):
                outstanding.popleft()
                if fields[P.R_STATUS] == P.CANCELLED:
                    worker.cancelled.discard(fields[P.R_ID])
                    continue
                total += fields[P.R_ELAPSED]
                n += 1
            worker.deadline = None
            if worker.allocation is not None and not outstanding:
                self.release(worker)
            if n:
                average = total / n
                self.runtime_ewma = average if not self.runtime_ewma else 0.7 * self.runtime_ewma + 0.3 * average
                self.depth = worker_depth(self.runtime_ewma)
            if outstanding:  # it begins the next one without a word
                self.started_soon()
            elif self.started_check is not None and not any(w.outstanding for w in self.workers.values()):
                self.started_check = None  # nothing left to begin: spare the wake-up
        elif kind == P.EXPRESS_DONE:
            pass  # its core is free again: the loop's dispatch places what waited
        elif kind == P.READY:
            worker.ready = True
            self.send_to_worker(worker, self.config_frames)
        elif kind == P.INIT_FAILED:
            worker.ready = True  # it started; its initializer failed
            self.report_broken(
                f"the initializer failed in worker {worker.rank} of pool {self.pool_id}",
                list(msg[1:]),
            )

    def long_starts(self) -> bool:
        """Whether a worker has run its current task since the last look, unreported.

        Starts ride up with results; only a task that runs longer than a look's interval
        needs a message of its own, or ``running()`` would wait for its end.  So the first
        look at a begun task only notes it, and a look finds it again only if it still runs.
        Looks go on while a worker holds tasks it has not begun.
        """
        long = False
        for worker in self.workers.values():
            if not worker.outstanding:
                continue
            head = worker.outstanding[0][2]
            claimed = worker.board.claimed()
            if claimed is None or worker.reported > head:
                continue
            if claimed <= head:
                self.started_soon()  # it has begun none of its tasks yet
            elif worker.head_seen == head:
                long = True
            else:
                worker.head_seen = head
                self.started_soon()
        return long

    def started_soon(self) -> None:
        """Look at the claim boards shortly: tasks may have begun that nobody reported yet."""
        if self.started_check is None:
            self.started_check = time.monotonic() + STARTED_DELAY

    def dispatch(self, now: float) -> None:
        """Hand queued tasks to workers with room, spreading a burst evenly, idle workers first."""
        queue = self.queue
        while queue:
            eligible = [
                w
                for w in self.workers.values()
                if w.ready and w.deadline is None and len(w.outstanding) < self.depth
            ]
            if not eligible:
                return
            eligible.sort(key=lambda w: len(w.outstanding) + (1 if w.board.express_task() else 0))
            # Each worker's fair part of all the work, counting workers still starting: a
            # worker that is ready first must not take what a slower starter will run.
            held = sum(len(w.outstanding) for w in self.workers.values())
            share = -(-(len(queue) + held) // max(len(self.workers), 1))  # ceiling division
            sent = 0
            for worker in eligible:
                if not queue:
                    return
                room = min(share - len(worker.outstanding), self.depth - len(worker.outstanding))
                if room > 0:
                    sent += self._send_to(worker, room, now)
            if not sent:  # e.g. a walltime task waits for an idle worker, or an express task's end
                ended = [w for w in self.workers.values() if w.board.express_task() and not w.board.want_express_end()]
                if not ended:
                    return

    def _send_to(self, worker: _Worker, room: int, now: float) -> int:
        queue = self.queue
        items: list[P.Item] = []
        while room > 0 and queue:
            entry = queue[0]
            item = entry[2]
            fields = item[0]
            walltime = fields[P.T_WALLTIME]
            resourced = P.has_resources(fields)
            if walltime > 0 or resourced:  # it goes alone to an idle worker
                if worker.outstanding or items or worker.board.express_task():
                    break
                if resourced and not self.allocate(worker, fields):
                    break  # it waits at the head until what it needs is free
                if walltime > 0:
                    worker.deadline = now + walltime
                    worker.walltime = walltime
                room = 0
            elif self.held_cores and not worker.outstanding and not self.plain_room():
                break  # the cores left are held by tasks with resources
            else:
                room -= 1
            heapq.heappop(queue)
            items.append(item)
            worker.outstanding.append((item, entry[1], worker.sent))
            worker.sent += 1
        if items:
            self.send_to_worker(worker, P.join(P.TASKS, P.TASK_META, items))
            self.started_soon()
        return len(items)

    def allocate(self, worker: _Worker, fields: tuple[Any, ...]) -> bool:
        """Give the idle ``worker`` what a task with resources needs, and tell it; or False.

        The task's cores must be free of both other such tasks and workers busy with
        default tasks.
        """
        need = Need.from_wire(*fields[P.T_CORES : P.T_RANKS + 1])
        if need.cores > self.capacity - self.held_cores - self.busy_with_default_tasks():
            return False
        if need.nodes:  # an MPI task: the mask names its nodes (0: any free ones)
            allocation = self.allocator.take(need, (), fields[P.T_GPU_MASK])
        else:
            allocation = self.allocator.take(need, gpus_in_mask(self.shape, fields[P.T_GPU_MASK]))
        if allocation is None:
            return False
        worker.allocation = allocation
        self.held_cores += len(allocation.cpus)
        if worker.cage is not None and allocation.memory_gb:
            worker.cage.limit(allocation.memory_gb)
        pin: dict[str, Any] = {"cpus": list(allocation.cpus), "gpus": list(allocation.gpus), "memory_gb": allocation.memory_gb}
        if allocation.nodes:  # an MPI task: its launch prefix and counts, for its nodes
            from ...launchers.mpi_prefix import MPISpec, mpi_environment

            spec = MPISpec(allocation.nodes, need.ranks_per_node)
            pin["env"] = mpi_environment(
                self.args.mpi_flavour,
                spec,
                executable=self.args.mpi_executable or None,
                oversubscribe=bool(self.args.mpi_oversubscribe),
            )
        self.send_to_worker(worker, [P.PIN, json.dumps(pin).encode()])
        return True

    def plain_room(self) -> bool:
        """Whether another worker may start default tasks beside those with resources."""
        return self.busy_with_default_tasks() + self.held_cores < self.capacity

    def busy_with_default_tasks(self) -> int:
        """How many workers hold default tasks (each uses a core, unpinned)."""
        return sum(
            1 for w in self.workers.values() if (w.outstanding or w.board.express_task()) and w.allocation is None
        )

    def take_sample(self) -> bytes:
        """This node's load now, as the JSON a HEARTBEAT carries (see :func:`~.protocol.parse_sample`).

        psutil reads /proc: a few hundred microseconds, every ``sample_interval`` seconds.
        """
        import psutil

        rss = 0
        for process in [os.getpid(), *(w.process.pid for w in self.workers.values())]:
            try:
                rss += psutil.Process(process).memory_info().rss
            except (psutil.Error, ValueError):  # ValueError: a worker not started (pid None)
                pass
        sample = {
            "load1": round(os.getloadavg()[0], 3),
            "cpu_percent": psutil.cpu_percent(interval=None),  # since the last call: the interval
            "mem_percent": psutil.virtual_memory().percent,
            "rss_mb": round(rss / (1 << 20), 3),
            "busy": sum(1 for w in self.workers.values() if w.outstanding or w.board.express_task()),
            "workers": len(self.workers),
        }
        return json.dumps(sample).encode()

    # -- main loop -----------------------------------------------------------------------

    def register(self) -> bool:
        """Register with the interchange; return False if it refused this pool.

        The token goes in a frame of its own: the interchange checks it before it parses the
        registration JSON.
        """
        info = P.registration(
            pool_id=self.pool_id,
            block_id=self.args.block_id,
            workers=self.workers_wanted,
            shape=self.shape.to_json(),
            host=socket.gethostname(),
            pid=os.getpid(),
            block_end_in=block_end_in(),
        )
        self.ix.send_multipart([P.REGISTER, P.CREDIT.pack(0), self.token.encode(), info])
        if not self.ix.poll(self.args.start_timeout * 1000):
            if self.ix.closed:
                why = f"{self.link_lost()} before it answered"
            else:
                why = f"did not answer within {self.args.start_timeout} s"
            print(f"the interchange at {self.args.addr} {why}", file=sys.stderr, flush=True)
            return False
        reply = self.ix.recv_multipart(copy=False)
        if bytes(reply[0]) == P.REJECT:
            print(
                f"the interchange refused this pool: {bytes(reply[1]).decode()}", file=sys.stderr, flush=True
            )
            return False
        settings = json.loads(bytes(reply[1]))
        self.lost_task_retries = settings["lost_task_retries"]
        self.heartbeat_period = settings["heartbeat_period"]
        self.heartbeat_threshold = settings["heartbeat_threshold"]
        self.sample_interval = float(settings.get("sample_interval", 0.0))
        worker_settings = json.dumps({"measure": bool(settings.get("measure"))}).encode()
        self.config_frames = [P.CONFIG, worker_settings, *(memoryview(f) for f in reply[2:])]
        return True

    def choose_address(self) -> bool:
        """Pick the interchange address to use among ``--addr``'s; False if none answers."""
        candidates = self.args.addr.split(",")
        if len(candidates) > 1:
            from ...addresses import choose_address

            chosen = choose_address(candidates, timeout=2.0)
            if chosen is None:
                print(
                    f"none of the interchange's addresses answered from {socket.gethostname()}: "
                    + ", ".join(candidates),
                    file=sys.stderr,
                    flush=True,
                )
                return False
            logger.info("chose %s of %s", chosen, candidates)
            self.args = dataclasses.replace(self.args, addr=chosen)
        return True

    def link_lost(self) -> str:
        """Say how the connection to the interchange (or, for a remote pool, to its relay) ended."""
        if self.relay is None:
            return "closed its connection"
        self.relay.join(timeout=1)  # it closed its end: it is exiting, if not gone
        return f"could not be reached: this pool's relay {describe_exit(self.relay.exitcode)}"

    def connect(self) -> bool:
        """Connect to the interchange; False (with the reason on stderr) if that failed.

        A remote pool's CurveZMQ socket lives in a relay process (see :mod:`.relay`), forked
        here, before any worker, so that it holds no worker's pipe; this process reads the
        relay as it reads a local pool's connection.
        """
        if self.args.addr.startswith(SCHEME):  # on the interchange's node
            try:
                self.ix = StreamConnection.connect(self.args.addr, self.args.start_timeout)
            except OSError as exc:
                print(f"cannot connect to the interchange at {self.args.addr}: {exc}", file=sys.stderr, flush=True)
                return False
        else:
            self.relay, self.ix = start_relay(self.fork, self.args.addr, self.args.keys)
            logger.info("relay %d connects to %s", self.relay.pid, self.args.addr)
            self.link_fds.append(self.relay.sentinel)
        self.link_fds.append(self.ix.fileno())
        return True

    def run(self) -> int:
        """Serve until the interchange says stop or is lost; return the exit code.

        This process never has a thread but its main one, so forking a worker, at start or to
        replace one that died, copies no lock held by another thread.
        """
        self.exit_code = 0
        keys = security.load(self.args.keys)
        self.token = keys["token"].decode()
        if self.args.express:
            self.express = (
                self.args.express, bytes(keys["token"]), {"pool": self.pool_id, "block": str(self.args.block_id), "tag": self.tag}
            )  # fmt: skip
        if not self.choose_address():
            return 2
        local = self.args.addr.startswith(SCHEME)
        if not local and not self.connect():  # the relay first: it must hold no worker's pipe
            return 2
        for rank in range(self.workers_wanted):
            self.start_worker(rank)
        if local and not self.connect():  # the workers start meanwhile, as the interchange does
            return 2
        if not self.register():
            return 2
        stream = self.ix
        ix_fd = stream.fileno()
        self.poller.register(ix_fd, select.POLLIN)
        last_heard = last_beat = time.monotonic()
        next_deadline: float | None = None
        if self.sample_interval:
            import psutil

            psutil.cpu_percent(interval=None)  # the first call only starts the interval
            self.next_sample = last_beat + self.sample_interval
        while self.running:
            watch_room(self.poller, ix_fd, stream.sender, pollout=select.POLLOUT, base=select.POLLIN)
            now = time.monotonic()
            wake = last_beat + self.heartbeat_period
            if next_deadline is not None:
                wake = min(wake, next_deadline)
            if self.sample_interval:
                wake = min(wake, self.next_sample)
            if self.started_check is not None:
                wake = min(wake, self.started_check)
            events = dict(self.poller.poll(max(0.0, wake - now) * 1000))
            now = time.monotonic()
            if ix_fd in events:
                # Heard only when it wrote: room to write to a remote pool's relay says
                # nothing of the interchange behind it.
                if events[ix_fd] & select.POLLIN:
                    last_heard = now
                if stream.sender.watched:
                    self.flush_up(stream)
                while stream.readable():
                    self.on_interchange(stream.recv_multipart(copy=False))
                if stream.closed:
                    print(f"lost the interchange: it {self.link_lost()}", file=sys.stderr, flush=True)
                    self.exit_code = 4
                    self.running = False
            died = []
            for fd in events:
                worker = self.by_result_fd.get(fd)
                if worker is not None:
                    self.read_worker(worker)
                    continue
                worker = self.by_task_fd.get(fd)
                if worker is not None:
                    self.drain_pipe(worker)
                    continue
                worker = self.by_sentinel.get(fd)
                if worker is not None:
                    died.append(worker)
            for worker in died:
                self.worker_died(worker)
            next_deadline = self.check_walltimes(now)
            if self.running:
                self.dispatch(now)
                next_deadline = self.check_walltimes(now) if next_deadline is None else next_deadline
            started = b""
            if self.started_check is not None and now >= self.started_check:
                self.started_check = None
                if self.long_starts():
                    started = self.started()
            sample: tuple[bytes, ...] = ()
            if self.sample_interval and now >= self.next_sample:
                sample = (self.take_sample(),)
                self.next_sample = now + self.sample_interval
            if self.out_meta:
                self.send_up(
                    P.RESULTS, started or self.started(), b"".join(self.out_meta), b"".join(self.out_mains), *self.out_extra
                )
                self.out_meta, self.out_mains, self.out_extra = [], [], []
                last_beat = now
            elif started or sample or now - last_beat >= self.heartbeat_period or self.credit() > self.credit_sent:
                self.send_up(P.HEARTBEAT, started or self.started(), *sample)
                last_beat = now
                sample = ()
            if sample:  # results went up instead of a heartbeat: the sample goes alone
                self.send_up(P.HEARTBEAT, b"", *sample)
            if now - last_heard > self.heartbeat_threshold:
                print(
                    f"lost the interchange: nothing heard for {self.heartbeat_threshold} s",
                    file=sys.stderr,
                    flush=True,
                )
                self.exit_code = 4
                self.running = False
        return self.exit_code

    def close(self) -> None:
        """Kill the workers, hand the interchange what is still queued for it, stop the relay."""
        for worker in list(self.workers.values()):
            self.kill_worker(worker)
            if worker.cage is not None:
                worker.cage.remove()
        if hasattr(self, "ix"):
            try:
                self.ix.flush()  # e.g. a last INIT_FAILED report
            except OSError:
                pass
            self.ix.close()  # the relay reads end-of-file, sends what it has, and exits
        if self.relay is not None:
            self.relay.join(timeout=RELAY_EXIT_SECONDS)
            if self.relay.is_alive():
                logger.warning("relay %d did not exit: killing it", self.relay.pid)
                self.relay.kill()
                self.relay.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a pool manager until the interchange tells it to stop or is lost."""
    args = PoolArgs.parse(sys.argv[1:] if argv is None else argv)
    setup_logging(args.log_file)

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        manager = PoolManager(args)
    except ConfigurationError as exc:  # settings this node cannot honour: say why, for the driver
        print(f"hpcfutures pool: {exc}", file=sys.stderr)
        return 2
    try:
        return manager.run()
    finally:
        manager.close()


if __name__ == "__main__":
    sys.exit(main())
