"""HighThroughputExecutor: the driver side of the pilot-job executor, and its public API.

``submit`` serializes the call on the caller's thread (so a bad argument raises there) and
hands it to the :class:`~.link.DriverLink`, whose one I/O thread sends whatever has queued
as one batch through the pipes to the interchange and resolves futures from result batches.
This module starts and stops the parts (the interchange process, the link, the block
thread of :mod:`.blocks`) and answers what the link asks: what a pool or block event means,
whether the interchange died, how to stop.  Its settings are an :class:`~.config.HtexConfig`
and its life a :class:`~.lifecycle.Lifecycle`.  No thread per task, no polling per task.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import shlex
import socket
import threading
import time
import weakref
from concurrent.futures import Executor, Future
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, TypeVar

from ..._validate import check_count
from ...errors import (
    PoolStartError,
    ResourceUnsatisfiableError,
    UnsupportedOptionError,
    VersionMismatchError,
)
from ...progressbar import ProgressSink
from ...providers.base import JobStatus
from ...resources import DEFAULT_OPTIONS, ExecutorView, Resources, TaskOptions, reject_unsupported
from ...serialize import dumps_call, loads_exception
from ..chunks import ordered_results, run_chunk
from ..progress import ExecutorProgress, map_bar
from . import launch
from . import protocol as P
from .blocks import BlockInfo, BlockManager
from .config import AtExit, HtexConfig
from .lifecycle import Lifecycle, Phase
from .link import DriverLink, HtexFuture, unlink_spilled
from .runspace import RunSpace, open_run_space
from .slots import Need

if TYPE_CHECKING:
    from ...monitor.location import RecordArg
    from ...monitor.recorder import Recorder
    from ...providers.base import ExecutionProvider

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The wire fields (cores, memory in MB, accelerators) of a task with the default resources.
_PLAIN = Need().wire()


_live_executors: weakref.WeakSet[HighThroughputExecutor] = weakref.WeakSet()


def _finish_all_at_exit() -> None:
    """At interpreter exit, let every live executor finish its tasks, or stop it (its ``at_exit``).

    Ctrl-C while this waits stops them all at once.
    """
    pid = os.getpid()
    executors = [ex for ex in list(_live_executors) if ex._owner_pid == pid]  # not a forked child's
    try:
        for executor in executors:
            executor._exit()
    except KeyboardInterrupt:
        for executor in executors:
            executor.terminate()
        raise


# Registered with threading, as the stdlib's executors are, rather than with atexit: it then
# runs before every atexit hook (logging's shutdown, the program's own clean-ups), so the tasks
# finishing and their done-callbacks still find the program whole.
try:
    threading._register_atexit(_finish_all_at_exit)  # type: ignore[attr-defined]
except RuntimeError:  # imported while the interpreter is already shutting down
    atexit.register(_finish_all_at_exit)


class HighThroughputExecutor(ExecutorProgress, Executor):
    """A ``concurrent.futures.Executor`` that runs tasks on pilot worker pools.

    With no provider it starts one local pool of ``max_workers`` processes and behaves as a
    drop-in for ``ProcessPoolExecutor``; with a provider its pools are batch jobs ("blocks").
    Nothing starts until the first submit.

    Args:
        max_workers: worker processes per pool (per node); None means one per available CPU.
        provider: where blocks run; ``LocalProvider()`` by default.
        label: a name for logs and the run directory.
        address: the address the interchange binds for pools; loopback by default.
        run_dir: where keys, block scripts and component logs go.  None: a private temporary
            directory, removed at shutdown, and no component logs.
        initializer, initargs: called as ``initializer(*initargs)`` in each worker at start;
            if it raises, the executor is broken and pending tasks fail, as in the stdlib.
        prefetch: tasks a pool asks for beyond what its workers take.  Each worker takes
            between 1 and 64 tasks at a time, adapting to how long tasks run (about 5 ms of
            work); priority cannot reorder tasks a worker already holds.
        heartbeat_period, heartbeat_threshold: seconds between heartbeats, and of silence
            after which a pool or the interchange counts as lost.
        lost_task_retries: how often a task whose worker or pool died is run again before it
            fails with WorkerLostError or PoolLostError.
        start_timeout: seconds a pool waits for the interchange to accept it before it exits.
        at_exit: what the end of the program does to unfinished tasks: ``"wait"`` runs them
            to the end first, as the stdlib's executors do; ``"terminate"`` kills them, as
            :meth:`terminate` does.
        cores_per_worker, mem_per_worker: cores and GB each worker takes: a pool runs no
            more workers than its cores (its memory) divided by them.  Without them and with
            ``max_workers``, a pool runs ``max_workers`` workers however many cores it has.
        available_accelerators: a count or the names of each node's accelerators; a pool
            runs at most one worker per accelerator, and each worker sees only its own
            (``CUDA_VISIBLE_DEVICES``, ``ROCR_VISIBLE_DEVICES``, ``ZE_AFFINITY_MASK``).
        tasks_per_accelerator: how many tasks may share one accelerator (as with CUDA MPS):
            a pool then runs up to that many workers per accelerator, and that many tasks
            with ``Resources(gpus=1)`` may hold the same device at once.
        cpu_affinity: ``"none"`` (default), or pin each worker for its life to a block of
            CPUs (``"block"``, ``"block-reverse"``) or to every n-th CPU (``"alternating"``);
            pinned workers get ``OMP_NUM_THREADS`` set to their CPU count.
        enforce_memory: hold each task with ``Resources(memory_gb=...)`` to that much with a
            memory cgroup per worker (Linux cgroup v1, writable; a pool that cannot refuses to
            start): a task that uses more is ended by the out-of-memory killer and fails with
            :class:`~hpcfutures.WorkerLostError`, without a retry.
        unsatisfiable_after: seconds a task whose ``Resources`` no registered pool could
            ever offer waits (for pools of another shape) before it fails with
            :class:`~hpcfutures.ResourceUnsatisfiableError`.  What the settings already rule
            out (``cores_per_node``, ``mem_per_node``, ``available_accelerators``) fails when
            the ``options()`` view is made.
        record: record the run (tasks, every try, blocks, pools, node samples) in an SQLite
            run record read by ``hpcfutures monitor``: True (the default family), False, a
            family name, or a path to a ``.db`` file.  None (the default) follows the
            ``HPCFUTURES_RECORD`` environment variable.  See docs/monitoring.md.
        sample_interval: seconds between two samples of each pool's node (load, CPU, memory,
            busy workers) while the run is recorded; 0 for none.
        express: with pools on this node (the default provider), let a lone task go from
            the driver straight to an idle worker and back, one process crossing each way
            instead of three (see docs/architecture.md, "The express lane").  False sends
            every task through the interchange.
    """

    #: ``submit`` only serializes the call and queues it for the I/O thread (see
    #: :class:`~hpcfutures.resources.NonBlockingSubmit`).
    submit_never_blocks = True
    # submit, map and options views all go through submit_with_options (see ExecutorProgress).
    _progress_entries = ("submit_with_options",)

    def __init__(
        self,
        max_workers: int | None = None,
        provider: ExecutionProvider | None = None,
        *,
        label: str = "htex",
        address: str | Sequence[str] = "127.0.0.1",
        tunnel: bool = False,
        run_dir: str | os.PathLike[str] | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        prefetch: int = 0,
        heartbeat_period: float = 1.0,
        heartbeat_threshold: float = 10.0,
        lost_task_retries: int = 2,
        start_timeout: float = 30.0,
        max_idletime: float = 120.0,
        block_poll_period: float = 1.0,
        at_exit: AtExit = "wait",
        cores_per_worker: float | None = None,
        mem_per_worker: float | None = None,
        available_accelerators: int | Sequence[str] = (),
        tasks_per_accelerator: int = 1,
        cpu_affinity: str = "none",
        enforce_memory: bool = False,
        unsatisfiable_after: float = 60.0,
        record: RecordArg = None,
        sample_interval: float = 10.0,
        express: bool = True,
    ):
        config = HtexConfig(
            max_workers=max_workers,
            provider=provider,  # type: ignore[arg-type]  # None: one local pool
            label=label,
            address=address,
            tunnel=tunnel,
            run_dir=run_dir,
            initializer=initializer,
            initargs=initargs,
            prefetch=prefetch,
            heartbeat_period=heartbeat_period,
            heartbeat_threshold=heartbeat_threshold,
            lost_task_retries=lost_task_retries,
            start_timeout=start_timeout,
            max_idletime=max_idletime,
            block_poll_period=block_poll_period,
            at_exit=at_exit,
            cores_per_worker=cores_per_worker,
            mem_per_worker=mem_per_worker,
            available_accelerators=available_accelerators,
            tasks_per_accelerator=tasks_per_accelerator,
            cpu_affinity=cpu_affinity,
            enforce_memory=enforce_memory,
            unsatisfiable_after=unsatisfiable_after,
            record=record,
            sample_interval=sample_interval,
            express=express,
        )
        #: The settings, as checked; the attributes below are their working copies.
        self.config = config
        self.max_workers = config.max_workers
        self.provider = config.provider
        self.label = config.label
        #: Where the interchange listens and pools may connect; several means pools choose.
        self.address = config.bind_address
        self.address_candidates = list(config.address_candidates)
        self.tunnel = config.tunnel
        self.run_dir = config.run_dir if config.run_dir is None else Path(config.run_dir)
        self.prefetch = config.prefetch
        self.heartbeat_period = config.heartbeat_period
        self.heartbeat_threshold = config.heartbeat_threshold
        self.lost_task_retries = config.lost_task_retries
        self.start_timeout = config.start_timeout
        self.max_idletime = config.max_idletime
        self.block_poll_period = config.block_poll_period
        self.at_exit: AtExit = config.at_exit
        self._initializer = config.initializer
        self._initargs = config.initargs

        # Must be held while changing the lifecycle, and by the link for its queues (see link.py).
        self._lock = threading.Lock()
        self._life = Lifecycle(self._lock)
        # Held by the start (the first submit) and by shutdown's close.  What the start builds
        # (the link, the interchange, the run directory, keys, ports, spill) is written only
        # under it, before the executor counts as started, and only read afterwards; a failed
        # start puts it back.  The link's and the block manager's state is theirs (see them).
        self._start_lock = threading.Lock()
        self._link: DriverLink | None = None  # from the start: the I/O thread's side of things
        self._io_thread: threading.Thread | None = None
        self._owner_pid = 0  # the process that started the executor; only it stops it at exit
        # The run record: this executor's own (opened at the start, closed at the release),
        # and the one blocks, pools and node samples go to (its own, or one it was attached to).
        self._recorder: Recorder | None = None
        self._infra_record: tuple[Recorder, str] | None = None
        self._block_manager = self._new_block_manager()
        self._space: RunSpace | None = None  # from the start: directories, keys, the interchange
        self._force_tcp = False  # tests: make local pools take the remote (CurveZMQ) path

    # -- public API ----------------------------------------------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` on a worker and return its Future.

        Raises:
            SerializationError: ``fn`` or an argument cannot be pickled (the message names it).
            RuntimeError: the executor was shut down.
            BrokenExecutorError: the executor can no longer run tasks (the cause says why).
        """
        return self.submit_with_options(DEFAULT_OPTIONS, fn, args, kwargs)

    def options(
        self,
        *,
        resources: Resources | None = None,
        walltime: float | None = None,
        priority: int | None = None,
    ) -> ExecutorView:
        """Return an Executor view whose submits carry these settings.

        ``walltime`` (seconds) is enforced by the pool: the task's worker is killed and the
        future fails with :class:`~hpcfutures.TaskTimeoutError`.  ``priority`` orders the
        queue (higher first).  ``resources`` (cores, memory_gb, gpus on one node) are held
        for the task while it runs: it goes only to a pool where they are free, runs pinned
        to its cores and accelerators, and gives them back when it ends, fails or loses its
        worker (see docs/resources.md).

        Raises:
            ResourceUnsatisfiableError: the settings rule the resources out (the provider's
                ``cores_per_node`` or ``mem_per_node``, ``available_accelerators``).
            UnsupportedOptionError: more than one node or rank.
        """
        return ExecutorView(self, DEFAULT_OPTIONS.merged(resources, walltime, priority))

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: bool | str | ProgressSink | None = False,
    ) -> Iterator[T]:
        """Like ``Executor.map``; ``chunksize`` > 1 sends each chunk of calls as one task.

        ``progress=True`` (or a backend name, or a ProgressSink) draws a bar that counts
        the tasks (the chunks) as they finish, in any order, while the results keep map's
        order (see :func:`hpcfutures.progress`).

        Raises:
            ConfigurationError: ``progress`` is none of True, False, a backend name or a ProgressSink.
        """
        bar = map_bar(progress, fn)
        if bar is None:
            return self.map_with_options(DEFAULT_OPTIONS, fn, iterables, timeout, chunksize, None)
        return bar.follow(self.map_with_options(DEFAULT_OPTIONS, fn, iterables, timeout, chunksize, bar.add))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; release the interchange, pools and workers once tasks are done.

        As in the stdlib: ``wait=True`` returns after every submitted task has finished and
        every process of the executor is gone; ``wait=False`` returns at once and the
        release happens in the background when the last task finishes.  Either way the
        program does not end before its submitted tasks have (unless ``at_exit="terminate"``).
        ``cancel_futures=True`` cancels every task that no worker has begun.  To stop
        running tasks too, use :meth:`terminate`.

        In a done-callback, which runs on the executor's I/O thread, ``wait=True`` acts as
        ``wait=False``: waiting there would wait for the thread that delivers the results.
        """
        if not self._close_for_submits():
            return
        if cancel_futures:
            self._cancel(list(self._pending.values()), everything=True)
        if not wait or self._on_io_thread():
            self._request_stop(kill=False, when_idle=True)
            return
        wait_futures(list(self._pending.values()))
        self._request_stop(kill=False)
        self._join_io_thread()

    def terminate(self) -> None:
        """Stop now: kill running tasks and return once every process of the executor is gone.

        Every unfinished future, queued or running, fails with
        :class:`~hpcfutures.ExecutorShutdownError`.  This returns in bounded time even when a
        task is stuck in C code; in a done-callback (on the I/O thread) it returns at once and
        the executor stops right after.  With ``at_exit="terminate"`` it runs at interpreter
        exit for executors still alive.
        """
        if not self._close_for_submits():
            return
        self._request_stop(kill=True)
        self._join_io_thread()

    def _close_for_submits(self) -> bool:
        """Refuse new submits; return whether there is anything left to stop."""
        with self._start_lock, self._lock:  # not while a first submit is starting it
            before = self._life.close()
        if before is Phase.NEW:
            self._release_provider()
            return False
        return not self._life.is_stopped

    def _join_io_thread(self) -> None:
        thread = self._io_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _on_io_thread(self) -> bool:
        """Whether the caller runs on the I/O thread (in a done-callback, say)."""
        return self._link is not None and self._link.on_io_thread()

    def _exit(self) -> None:
        """At interpreter exit: let the submitted tasks finish, then stop; or, per ``at_exit``, stop now.

        Like ``shutdown(wait=False)`` followed by a wait for the I/O thread, which ends once no
        task is pending: when the tasks finish, or fail because the executor broke or the
        interchange is gone.
        """
        if self.at_exit == "terminate":
            self.terminate()
        elif self._close_for_submits():
            self._request_stop(kill=False, when_idle=True)
            self._join_io_thread()

    @property
    def endpoints(self) -> dict[str, str]:
        """Where worker pools connect: ``tcp`` (CurveZMQ) and, on this node, ``ipc``.

        Empty until the executor has started (at the first submit).
        """
        space = self._space
        if space is None:
            return {}
        port = space.pool_port
        tunnel_port = self._block_manager.tunnel_port
        if tunnel_port is not None:
            tcp = f"tcp://127.0.0.1:{tunnel_port}"  # the SSH host's end of the tunnel
        else:
            hosts = [a if a not in ("0.0.0.0", "*", "::") else socket.gethostname() for a in self.address_candidates]
            tcp = ",".join(f"tcp://{h}:{port}" for h in hosts)
        return {"tcp": tcp, "ipc": f"unix://{space.ipc_dir}/pools"}

    def blocks(self) -> list[BlockInfo]:
        """Snapshots of every block this executor started, in order."""
        return self._block_manager.blocks()

    @property
    def pools(self) -> dict[str, dict[str, Any]]:
        """The worker pools connected now, by pool id: what each said when it registered."""
        return self._block_manager.pools

    @property
    def block_failures(self) -> list[JobStatus]:
        """What the provider said of blocks that ended before any of their pools connected."""
        return self._block_manager.block_failures

    @property
    def key_dir(self) -> Path | None:
        """The directory holding this executor's key files (owner-only), once started."""
        return self._space.keys.directory if self._space is not None else None

    # -- submitting ----------------------------------------------------------------------------

    def check_options(self, options: TaskOptions) -> None:
        """Raise for a setting this executor cannot honour (the :class:`OptionsBackend` contract)."""
        reject_unsupported("HighThroughputExecutor", options, resources=True, walltime=True, priority=True)
        resources = options.resources
        if resources.num_nodes != 1 or resources.ranks_per_node != 1:
            raise UnsupportedOptionError(
                f"HighThroughputExecutor runs a task on one node with one process: "
                f"Resources(num_nodes={resources.num_nodes}, ranks_per_node={resources.ranks_per_node}) "
                "needs an executor that starts MPI jobs"
            )
        why = self._never_fits(resources)
        if why is not None:
            raise ResourceUnsatisfiableError(why)
        block_walltime = self.provider.walltime_seconds
        if options.walltime and block_walltime and options.walltime > block_walltime:
            raise ValueError(
                f"walltime={options.walltime:g} s exceeds the walltime of this executor's blocks "
                f"({block_walltime} s), so no block could finish the task; lower the task's walltime "
                "or raise the provider's"
            )

    #: Whether a task with the default Resources() is a default task here (not for MPIExecutor).
    _plain_default = True

    def _need(self, resources: Resources) -> tuple[int, ...]:
        """A task's resources as its wire fields."""
        return Need.of(resources).wire()

    def _never_fits(self, resources: Resources) -> str | None:
        """Why no pool this executor can have could run a task with ``resources``, or None.

        Only what the settings fix is checked here: the provider's ``cores_per_node`` and
        ``mem_per_node``, and ``available_accelerators``.  What they leave open is known once
        pools register; the interchange then fails a task no registered pool could ever run
        after ``unsatisfiable_after`` seconds.
        """
        cores = self.provider.cores_per_node
        memory = self.provider.mem_per_node
        accelerators = tuple(self.config.available_accelerators)  # type: ignore[arg-type]  # names, once checked
        if cores and resources.cores > cores:
            return f"Resources(cores={resources.cores}) can never run: the provider's nodes have cores_per_node={cores}"
        if memory and resources.memory_gb and resources.memory_gb > memory:
            return (
                f"Resources(memory_gb={resources.memory_gb:g}) can never run: the provider's nodes "
                f"have mem_per_node={memory:g}"
            )
        if resources.gpus > len(accelerators):
            have = f"names {len(accelerators)} ({', '.join(accelerators)})" if accelerators else "is empty"
            return (
                f"Resources(gpus={resources.gpus}) can never run: this executor's available_accelerators "
                f"{have}; list each node's accelerators there"
            )
        return None

    def submit_with_options(
        self, options: TaskOptions, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> HtexFuture:
        """Submit one call with these settings (what an ``options()`` view calls)."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable first argument, got {type(fn).__name__}")
        self._life.check_submit()  # fail early, before serializing; checked again under the lock
        if not self._life.started:
            self._start()
        spilled: list[str] = []
        assert self._space is not None and self._link is not None  # started above
        frames = dumps_call(fn, args, kwargs, self._space.spill, spilled)
        walltime = options.walltime or 0.0
        resources = options.resources
        need = _PLAIN if resources is DEFAULT_OPTIONS.resources and self._plain_default else self._need(resources)
        future = self._link.enqueue(options.priority, walltime, frames, need, fn, args, options)
        if spilled:
            future.spilled = spilled
            future.add_done_callback(unlink_spilled)  # for paths that end it outside the I/O thread
        return future

    def map_with_options(
        self,
        options: TaskOptions,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int,
        hook: Callable[[Future[Any]], None] | None,
    ) -> Iterator[Any]:
        """``map`` with these settings, chunked; ``hook`` sees every future it creates."""
        check_count("chunksize", chunksize, 1, error=ValueError)
        end_time = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables)
        if chunksize == 1:
            futures = [self.submit_with_options(options, fn, args, {}) for args in calls]
        else:
            futures = []
            while chunk := list(itertools.islice(calls, chunksize)):
                futures.append(self.submit_with_options(options, run_chunk, (fn, chunk), {}))
        if hook is not None:
            for fut in futures:
                hook(fut)
        return ordered_results(futures, end_time, chunksize > 1, self._cancel)

    # -- cancelling -----------------------------------------------------------------------------

    def _cancel(self, futures: list[HtexFuture], everything: bool = False) -> bool:
        """Cancel what can be cancelled of ``futures``; return whether all of them were."""
        if self._link is None:
            return all(f.cancelled() for f in futures)
        return self._link.cancel(futures, everything)

    def _control(self, kind: str, payload: Any) -> None:
        """Hand an order to the I/O thread (see :meth:`DriverLink.control`)."""
        if self._link is not None:
            self._link.control(kind, payload)
        elif kind == "cancel":
            payload[1].set()

    @property
    def _pending(self) -> dict[int, HtexFuture]:
        """The futures of tasks not finished (the link's; none before the start)."""
        return self._link.pending if self._link is not None else {}

    def _request_stop(self, kill: bool, when_idle: bool = False) -> None:
        self._control("stop", (kill, when_idle))

    # -- starting --------------------------------------------------------------------------------

    def _start(self) -> None:
        """Start the interchange, the first blocks and the threads; if a step raises, undo the rest.

        A failed start leaves no process, pipe, key or directory of its own behind (only a
        ``run_dir``'s run directory stays, with the logs that may say why) and the executor
        unstarted, so the next submit starts afresh.
        """
        with self._start_lock:
            if self._life.started:
                return
            with contextlib.ExitStack() as rollback:  # undoes the steps done when a later one raises
                rollback.callback(self._forget_failed_start)
                recorder = self._open_record(rollback)
                space = self._space = open_run_space(
                    self.config, self._pools_are_local(), rollback, recording=self._infra_record is not None
                )
                link = self._link = DriverLink(
                    self, self._lock, self._life, space.to_interchange, space.from_interchange
                )
                rollback.callback(link.close_wake_pipe)
                link.lost_task_retries = self.config.lost_task_retries
                if self.config.express and self._pools_are_local():
                    from .express import ExpressLane

                    link.express = ExpressLane(space.express_path, space.keys.token)
                    rollback.callback(link.express.close)
                if recorder is not None:
                    from .recording import TaskRecording

                    link.recording = TaskRecording(recorder, self.label)
                self.provider.script_dir = str(space.directory / "blocks")
                os.makedirs(self.provider.script_dir, exist_ok=True)
                blocks = self._block_manager
                if self.tunnel:
                    blocks.open_tunnel(space.pool_port)
                    rollback.callback(blocks.close_tunnel)
                logger.info("%s: pools connect to %s", self.label, self.endpoints["tcp"])
                rollback.callback(blocks.cancel_all_now)
                for _ in range(min(self.provider.init_blocks, self.provider.max_blocks)):
                    try:
                        blocks.start_block()
                    except Exception as exc:  # noqa: BLE001 - e.g. the scheduler refused the job
                        blocks.submit_failed(exc)  # breaks the executor when nothing else can run
                        break
                self._io_thread = threading.Thread(
                    target=link.run, name=f"hpcfutures-{self.label}-io", daemon=True
                )
                blocks.start_thread()
                rollback.callback(blocks.stop_thread)
                self._owner_pid = os.getpid()
                with self._lock:
                    self._life.run()
                _live_executors.add(self)
                self._io_thread.start()
                rollback.pop_all()  # started: from now on the link's teardown releases everything

    def _open_record(self, rollback: contextlib.ExitStack) -> Recorder | None:
        """Open this executor's run record, if it records and no layer above records for it.

        Raises:
            RecordError: the record cannot be opened.
        """
        if self._infra_record is not None or self.config.record_to is None:
            return None
        from .recording import open_record

        recorder = open_record(self, self.config.record_to)
        rollback.callback(recorder.close, "failed", "the executor could not start")
        self._recorder = recorder
        self._infra_record = (recorder, self.label)
        self._block_manager.record_to(recorder, self.label)
        return recorder

    def attach_recorder(self, recorder: Recorder, label: str) -> None:
        """Record this executor's blocks, pools and node samples into ``recorder``'s run, under
        ``label``; its tasks are left to the caller, which records them itself (the
        :class:`~hpcfutures.monitor.execution.Recordable` protocol, used by DataflowExecutor).

        Called before the first task, it also turns on what workers measure for the record
        (CPU time, peak RSS: see ``HtexFuture.execution``) and node samples, and the
        executor opens no record of its own; called later, blocks and pools from then on go
        to ``recorder``.
        """
        self._infra_record = (recorder, label)
        self._block_manager.record_to(recorder, label)

    def _forget_failed_start(self) -> None:
        """The last step of a rollback: the executor is as before its first submit."""
        with self._lock:
            self._life.undo_start()  # a block that could not be submitted: the next start tries again
        self._link = None
        self._space = None
        if self._recorder is not None:
            if self._infra_record is not None and self._infra_record[0] is self._recorder:
                self._infra_record = None
            self._recorder = None
        self._block_manager = self._new_block_manager()  # its counters and stopped thread start over
        _live_executors.discard(self)
        self._owner_pid = 0

    def _new_block_manager(self) -> BlockManager:
        blocks = BlockManager(
            self,
            self.provider,
            label=self.label,
            max_workers=self.max_workers,
            max_idletime=self.max_idletime,
            block_poll_period=self.block_poll_period,
        )
        if self._infra_record is not None:
            blocks.record_to(*self._infra_record)
        return blocks

    def _pools_are_local(self) -> bool:
        from ...providers.local import LocalProvider

        return isinstance(self.provider, LocalProvider) and not self._force_tcp

    def _pool_command(self, block_id: str) -> str:
        """The shell command that runs a pool of block ``block_id`` (the block manager asks)."""
        assert self._space is not None  # blocks start after the run space
        local = self._pools_are_local()
        address = self.endpoints["ipc" if local else "tcp"]
        express = self._link is not None and self._link.express is not None and local
        return shlex.join(self._space.pool_command(self.config, block_id, address, express=express))

    # -- what the block manager asks of the executor -------------------------------------------

    def _outstanding(self) -> int:
        return len(self._pending)

    def _accepting(self) -> bool:
        return not self._life.closed and self._life.error is None

    def _shutting_down(self) -> bool:
        return self._life.closed

    def _drain(self, block_id: str) -> None:
        self._control("drain", block_id)

    # -- what the link asks of the executor (on the I/O thread) ---------------------------------

    def _interchange_ended(self) -> None:
        """The pipes to the interchange closed: wait briefly for its exit status, report it."""
        assert self._space is not None  # the link runs only after the start
        launch.stop(self._space.interchange, 5.0)
        self._check_interchange()

    def _on_block_idle(self, idle: dict[str, float]) -> None:
        express = self._link.express if self._link is not None else None
        if express is not None and idle:  # the interchange does not see the express lane's work
            busy = express.busy_blocks(self.config.heartbeat_period * 2)
            idle = {block: 0.0 if block in busy else seconds for block, seconds in idle.items()}
        self._block_manager.blocks_idle(idle)

    def _on_event(self, event: dict[str, Any], frames: list[memoryview]) -> None:
        kind = event.get("event")
        blocks = self._block_manager
        link = self._link
        assert link is not None  # events come through it
        if kind == "pool_registered":  # results name their pool by its tag
            pool = str(event.get("pool"))
            link.pool_names[P.pool_tag(pool)] = (pool, str(event.get("host")))
        if self._infra_record is not None:
            from .recording import record_event

            record_event(*self._infra_record, link.recording, event)
        if kind == "worker_lost" and event.get("express"):
            link.express_worker_lost(event)
        elif kind == "pool_registered":
            blocks.pool_registered(event)
        elif kind == "block_drained":
            blocks.block_drained(str(event.get("block")))
        elif kind == "pool_lost":
            blocks.pool_lost(event)
        elif kind == "pool_rejected":
            if blocks.pools_connected == 0:
                assert self._link is not None
                self._link.fail_all(VersionMismatchError(event.get("reason", "a worker pool was rejected")))
        elif kind == "pool_failed":
            error = PoolStartError(
                f"worker pool of block {event.get('block')} could not start: {event.get('reason')}"
            )
            if frames:
                try:
                    error.__cause__ = loads_exception(list(frames))
                except Exception:  # noqa: BLE001
                    pass
            self._break(error)

    def _check_interchange(self) -> None:
        assert self._space is not None
        error = self._space.interchange_lost()
        if error is not None:
            self._break(error)

    # -- failing and stopping ---------------------------------------------------------------------

    def _break(self, error: BaseException) -> None:
        """Mark the executor broken (the first error stays) and fail every pending task with ``error``.

        Any thread may call this; the I/O thread fails the futures, as it owns them.
        """
        with self._lock:
            self._life.break_with(error)
        link = self._link
        if link is None:
            return
        if link.on_io_thread():
            link.fail_all(error)
        else:
            link.control("fail", error)

    def _stop_processes(self, kill: bool) -> None:
        """The interchange was told to stop: wait for it (briefly if ``kill``), then stop the blocks."""
        assert self._space is not None
        launch.stop(self._space.interchange, 1.0 if not kill else 0.2)
        self._block_manager.stop_thread()
        self._block_manager.stop_blocks(kill)

    def _release(self) -> None:
        """The link is closed: release the tunnel, the provider, the directories and the run
        record; stopped."""
        _live_executors.discard(self)
        self._block_manager.close_tunnel()
        self._release_provider()
        if self._space is not None:
            self._space.remove()
        self._close_record()
        self._life.stopped()

    def _close_record(self) -> None:
        """Close this executor's run record: done, failed with the breaking error, or
        interrupted by :meth:`terminate`."""
        recorder = self._recorder
        if recorder is None:
            return
        error = self._life.error
        if error is not None:
            recorder.close("failed", f"{type(error).__name__}: {error}")
        elif self._link is not None and self._link.kill_on_stop:
            recorder.close("interrupted", "the executor was terminated")
        else:
            recorder.close("done")

    def _release_provider(self) -> None:
        """Close the provider: it cancels any job left and removes its own files (see its ``close``)."""
        self.provider.close()
