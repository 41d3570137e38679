"""Every example of Parsl's tutorial, rewritten for hpcfutures apps, on threads and on HTEX.

The apps are bare decorators, as in the tutorial; each test activates its
DataflowExecutor with ``with dfx:``, where Parsl's would call ``parsl.load(config)``.
"""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

from hpcfutures import (
    DataflowExecutor,
    DependencyError,
    File,
    ThreadExecutor,
    bash_app,
    python_app,
)
from hpcfutures.testing import Gate

# HTEX workers need not be able to import this module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TIMEOUT = 60


# -- Hello world ------------------------------------------------------------------------------------


@python_app
def hello_python(message):
    return f"Hello {message}"


@bash_app
def hello_bash(message, stdout="hello-stdout"):
    return f'echo "Hello {message}"'


def test_hello_world(dfx, tmp_path):
    with dfx:
        assert hello_python("World (Python)").result(TIMEOUT) == "Hello World (Python)"
        out = tmp_path / "hello-stdout"
        future = hello_bash("World (Bash)", stdout=str(out))
        assert future.result(TIMEOUT) == 0
    assert future.stdout == str(out)
    assert out.read_text() == "Hello World (Bash)\n"


# -- Multiply: the quick start --------------------------------------------------------------------------


@python_app
def multiply(a, b):
    return a * b


def test_multiply(dfx):
    with dfx:
        assert multiply(5, 9).result(TIMEOUT) == 45
        # A future is an argument like any other: the second call waits for the first.
        assert multiply(multiply(2, 3), 7).result(TIMEOUT) == 42


# -- Passing data: a sequential workflow ------------------------------------------------------------------


@python_app
def generate(limit, gate=None):
    from random import randint

    if gate is not None:
        gate()
    return randint(1, limit)


@bash_app
def save(variable, outputs=()):
    return f"echo {variable} &> {outputs[0]}"


def test_sequential(dfx, tmp_path):
    with dfx:
        message = generate(10)
        saved = save(message, outputs=[File(str(tmp_path / "sequential-output.txt"))])
        saved_file = saved.outputs[0].result(TIMEOUT)
    assert isinstance(saved_file, File)
    with open(saved_file) as f:
        number = int(f.read())
    assert number == message.result() and 1 <= number <= 10


# -- A parallel loop ------------------------------------------------------------------------------------


def test_parallel_loop(dfx):
    with dfx, Gate() as gate:
        rand_nums = [generate(i, gate.wait) for i in range(1, 5)]
        if isinstance(dfx.executors["default"], ThreadExecutor):
            gate.wait_entered(4, timeout=TIMEOUT)  # all four run at once
        # Not checked on HTEX: after a run of short tasks its pool queues a burst on one
        # worker (its adaptive depth), so two of these need not be running together.
        gate.open()
        outputs = [r.result(TIMEOUT) for r in rand_nums]
    assert all(1 <= n <= i for i, n in enumerate(outputs, 1))


# -- Parallel dataflow with bash apps and files --------------------------------------------------------


@bash_app
def generate_file(outputs=()):
    return f"echo $(( RANDOM )) &> {outputs[0]}"


@bash_app
def concat(inputs=(), outputs=()):
    return "cat {} > {}".format(" ".join(i.filepath for i in inputs), outputs[0])


@python_app
def total(inputs=()):
    with open(inputs[0]) as f:
        return sum(int(line) for line in f)


def test_parallel_dataflow(dfx, tmp_path):
    with dfx:
        output_files = [generate_file(outputs=[File(str(tmp_path / f"random-{i}.txt"))]) for i in range(5)]
        cc = concat(inputs=[i.outputs[0] for i in output_files], outputs=[File(str(tmp_path / "all.txt"))])
        result = total(inputs=[cc.outputs[0]])
        value = result.result(TIMEOUT)
    numbers = [int((tmp_path / f"random-{i}.txt").read_text()) for i in range(5)]
    assert (tmp_path / "all.txt").read_text().split() == [str(n) for n in numbers]
    assert value == sum(numbers)


# -- Monte Carlo pi ------------------------------------------------------------------------------------


def _inside(x, y):
    return x * x + y * y < 1


@python_app
def pi(num_points):
    from random import random

    inside = sum(1 for _ in range(num_points) if _inside(random(), random()))
    return inside * 4 / num_points


@python_app
def mean(a, b, c):
    return (a + b + c) / 3


def test_monte_carlo_pi(dfx):
    with dfx:
        a, b, c = pi(10**5), pi(10**5), pi(10**5)
        avg_pi = mean(a, b, c)
        estimate = avg_pi.result(TIMEOUT)
    assert abs(estimate - 3.14159) < 0.05


# -- Map-reduce ------------------------------------------------------------------------------------------


@python_app
def app_double(x):
    return x * 2


@python_app
def app_sum(inputs=()):
    return sum(inputs)


def test_map_reduce(dfx):
    with dfx:
        mapped_results = [app_double(i) for i in range(4)]
        reduced = app_sum(inputs=mapped_results)
        assert reduced.result(TIMEOUT) == 12


# -- Error handling: exceptions, and the lazy-failure graph -----------------------------------------------


@python_app
def bad_divide(x):
    return 6 / x


@python_app
def step(label, *parents):
    if label == "C":
        raise ValueError("task C fails")
    return label + "".join(parents)


def test_task_exception(dfx):
    with dfx:
        doubled_x = bad_divide(0)
        with pytest.raises(ZeroDivisionError):
            doubled_x.result(TIMEOUT)


def test_lazy_failure_graph(dfx):
    #      (A)             [A]
    #      / \             / \
    #    (B) (C)    =>   [B] (C*)
    #     |   |           |   |
    #    (D) (E)         [D] (!E)
    #      \ /             \ /
    #      (F)             (!F)
    # plus independent chains that never see the failure.
    with dfx:
        a = step("A")
        b, c = step("B", a), step("C", a)
        d, e = step("D", b), step("E", c)
        f = step("F", d, e)
        chains = []
        for i in range(3):
            x = step(f"x{i}")
            for _ in range(3):
                x = step("+", x)
            chains.append(x)
        tasks = [a, b, c, d, e, f, *chains]
        for t in tasks:
            t.exception(TIMEOUT)  # wait for every task, failed or not
    assert (a.result(), b.result(), d.result()) == ("A", "BA", "DBA")
    assert [x.result() for x in chains] == [f"+++x{i}" for i in range(3)]
    with pytest.raises(ValueError, match="task C fails"):
        c.result()
    for dependent in (e, f):
        error = dependent.exception()
        assert isinstance(error, DependencyError)
        assert isinstance(error.__cause__, ValueError)
        assert f"task {c.task_id} (step)" in str(error)
    assert f.exception().chain == [f"task {t.task_id} (step)" for t in (c, e, f)]


# -- The apps' functions really travel by value ----------------------------------------------------------


@python_app
def loaded_modules():
    assert _inside(0.1, 0.2)  # a module-level helper: it travels with the app
    return os.getpid(), __name__ in sys.modules


def test_apps_need_not_be_importable_on_workers(htex, tmp_path):
    with DataflowExecutor(htex, run_dir=tmp_path):
        pid, imported = loaded_modules().result(TIMEOUT)
    assert pid != os.getpid()
    assert not imported, f"an HTEX worker imported {__name__}: something went by reference"
