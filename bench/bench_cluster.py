"""How fast HighThroughputExecutor blocks come and go on a real Slurm cluster.

Measures, on the cluster that ``tests/infra/slurm.sh start`` brings up (root needed):

- construct → first result with one Slurm block (``SlurmProvider`` + ``SrunLauncher``);
- no-op throughput through a pool that runs as a Slurm job;
- scale-out: from no block to two, until two tasks run at once;
- idle scale-in: from the last result until ``squeue`` lists none of the executor's jobs
  (``max_idletime`` plus the block poll period plus Slurm's own time);
- ``shutdown()``.

Run: ``python bench/bench_cluster.py [--repeat N] [--keep-cluster]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpcfutures import HighThroughputExecutor  # noqa: E402
from hpcfutures.launchers import SrunLauncher  # noqa: E402
from hpcfutures.providers import SlurmProvider  # noqa: E402
from hpcfutures.testing import Gate, faults  # noqa: E402

TASKS = 10_000
MAX_IDLETIME = 2.0
POLL = 0.5


def queued() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30, check=True)
    return set(out.stdout.split())


def one_round() -> dict[str, float]:
    figures: dict[str, float] = {}
    start = time.perf_counter()
    provider = SlurmProvider(partition="debug", walltime="00:05:00", max_blocks=1, launcher=SrunLauncher())
    with HighThroughputExecutor(max_workers=2, provider=provider, run_dir=tempfile.mkdtemp(), block_poll_period=POLL) as ex:
        ex.submit(pow, 2, 2).result(timeout=120)
        figures["construct -> first result (s)"] = time.perf_counter() - start
        start = time.perf_counter()
        futures = [ex.submit(pow, 2, i) for i in range(TASKS)]
        for fut in futures:
            fut.result(timeout=120)
        figures["no-op tasks/s on a Slurm block"] = TASKS / (time.perf_counter() - start)

    provider = SlurmProvider(
        partition="debug", walltime="00:05:00", init_blocks=0, min_blocks=0, max_blocks=2, launcher=SrunLauncher()
    )
    ex = HighThroughputExecutor(
        max_workers=1, provider=provider, run_dir=tempfile.mkdtemp(), block_poll_period=POLL, max_idletime=MAX_IDLETIME
    )
    with Gate() as gate:
        start = time.perf_counter()
        futures = [ex.submit(faults.identity_after, gate.wait) for _ in range(2)]
        gate.wait_entered(2, timeout=120)
        figures["scale-out 0 -> 2 blocks (s)"] = time.perf_counter() - start
        gate.open()
        for fut in futures:
            fut.result(timeout=120)
    start = time.perf_counter()
    mine = {b.job_id for b in ex.blocks()}
    while mine & queued():
        time.sleep(0.05)
    figures[f"idle scale-in, max_idletime={MAX_IDLETIME:g} s (s)"] = time.perf_counter() - start
    start = time.perf_counter()
    ex.shutdown()
    figures["shutdown (s)"] = time.perf_counter() - start
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep-cluster", action="store_true", help="leave the Slurm cluster running")
    args = parser.parse_args()
    infra = ROOT / "tests" / "infra" / "slurm.sh"
    subprocess.run(["bash", str(infra), "start"], check=True, capture_output=True, timeout=300)
    try:
        rounds = [one_round() for _ in range(args.repeat)]
    finally:
        if not args.keep_cluster:
            subprocess.run(["bash", str(infra), "stop"], check=False, capture_output=True, timeout=300)
    for name in rounds[0]:
        values = [r[name] for r in rounds]
        shown = ", ".join(f"{v:,.0f}" if v > 100 else f"{v:.2f}" for v in values)
        print(f"{name:45s} median {statistics.median(values):>10,.2f}   runs: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
