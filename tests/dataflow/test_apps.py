"""Tests of python, bash and join apps (hpcfutures/dataflow/apps.py and bash.py)."""

from __future__ import annotations

import os
import sys
import threading

import cloudpickle
import pytest

from hpcfutures import (
    AUTO_LOGNAME,
    BashAppNoReturn,
    BashExitFailure,
    ConfigurationError,
    DataflowExecutor,
    DataFuture,
    DependencyError,
    File,
    JoinError,
    MissingOutputs,
    NoExecutorBoundError,
    TaskTimeoutError,
    ThreadExecutor,
    UnsupportedOptionError,
    bash_app,
    join_app,
    python_app,
)
from hpcfutures.testing import Gate
from tests.executors.htex_helpers import assert_all_gone

# HTEX workers need not be able to import this module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TIMEOUT = 60


@pytest.fixture
def tdfx(tmp_path):
    """A DataflowExecutor over threads, for what does not depend on the backend."""
    dfx = DataflowExecutor(ThreadExecutor(max_workers=4), run_dir=tmp_path / "run", shutdown_executors=True)
    try:
        yield dfx
    finally:
        dfx.shutdown(wait=True, cancel_futures=True)


# -- apps used by several tests ------------------------------------------------------------------------------


@python_app
def add(a, b=0):
    """Add two numbers."""
    return a + b


@python_app
def fail(message):
    raise ValueError(message)


@python_app
def wait_at(gate):
    gate()
    return "passed"


@python_app
def seen(*args, **kwargs):
    """Report what the function received."""
    return args, kwargs


@python_app
def no_specials(x):
    return x


@python_app
def takes_inputs(inputs=()):
    return list(inputs)


@bash_app
def run(command, stdout=None, stderr=None, outputs=()):
    return command


@bash_app
def returns(value):
    return value


@bash_app
def logged(message, stdout=AUTO_LOGNAME, stderr=AUTO_LOGNAME):
    return f"echo out {message}; echo err {message} >&2"


@bash_app(walltime=30)
def with_walltime(command, walltime=None):
    return command


# -- bash apps --------------------------------------------------------------------------------------------


def test_bash_exit_code_is_carried(dfx, tmp_path):
    err = tmp_path / "err.txt"
    with dfx:
        future = run("echo something broke >&2; exit 3", stderr=str(err))
        error = future.exception(TIMEOUT)
    assert isinstance(error, BashExitFailure)
    assert error.exit_code == 3
    assert "exited with code 3" in str(error) and "exit 3" in str(error)
    assert "something broke" in str(error)  # the tail of its stderr


def test_bash_success_returns_zero_and_streams_go_to_files(dfx, tmp_path):
    out, err = tmp_path / "sub" / "out.txt", tmp_path / "err.txt"
    with dfx:
        future = run("echo to-out; echo to-err >&2", stdout=str(out), stderr=File(str(err)))
        assert future.result(TIMEOUT) == 0
    assert (future.stdout, future.stderr) == (str(out), str(err))
    assert out.read_text() == "to-out\n"  # its parent directory was created
    assert err.read_text() == "to-err\n"


def test_bash_walltime_kills_the_process_tree(dfx, tmp_path):
    pids = tmp_path / "pids"
    with dfx:
        future = with_walltime(f"sleep 1000 & echo $$ $! > {pids}; wait", walltime=1)
        error = future.exception(TIMEOUT)
    assert isinstance(error, TaskTimeoutError)
    assert "walltime of 1 s" in str(error)
    shell, child = (int(p) for p in pids.read_text().split())
    assert_all_gone({shell, child})


def test_bash_walltime_from_the_decorator_and_the_signature(tdfx):
    @bash_app(executor=tdfx, walltime=0.2)
    def from_decorator():
        return "sleep 1000"

    @bash_app(executor=tdfx)
    def from_signature(walltime=0.2):
        return "sleep 1000"

    for future in (from_decorator(), from_signature()):
        assert isinstance(future.exception(TIMEOUT), TaskTimeoutError)


def test_bash_missing_outputs(dfx, tmp_path):
    made, missing = tmp_path / "made.txt", tmp_path / "missing.txt"
    with dfx:
        future = run(f"touch {made}", outputs=[str(made), File(str(missing))])
        error = future.exception(TIMEOUT)
    assert isinstance(error, MissingOutputs)
    assert error.outputs == [str(missing)]
    assert str(missing) in str(error) and "run" in str(error)
    assert isinstance(future.outputs[0].exception(), MissingOutputs)  # its DataFutures fail too


@pytest.mark.parametrize("value, described", [(42, "int: 42"), (None, "NoneType (did it forget to return?)")])
def test_bash_app_must_return_a_string(dfx, value, described):
    with dfx:
        error = returns(value).exception(TIMEOUT)
    assert isinstance(error, BashAppNoReturn)
    expected = f"bash app returns must return the command to run as a str, but it returned {described}"
    assert expected in str(error)


def test_auto_logname(dfx):
    with dfx:
        future = logged("hello")
        assert future.result(TIMEOUT) == 0
    logs = dfx.run_dir / "task_logs"
    assert future.stdout == str(logs / f"logged-{future.task_id}.stdout")
    assert future.stderr == str(logs / f"logged-{future.task_id}.stderr")
    assert open(future.stdout).read() == "out hello\n"
    assert open(future.stderr).read() == "err hello\n"


def test_auto_logname_reaches_a_python_app_that_takes_it(tdfx):
    @tdfx.python_app
    def where_to(stdout=AUTO_LOGNAME):
        return stdout

    future = where_to()
    assert future.result(TIMEOUT) == future.stdout
    assert future.stdout.endswith(f"task_logs/where_to-{future.task_id}.stdout")


def test_stream_modes(tdfx, tmp_path):
    appended, truncated = tmp_path / "appended.txt", tmp_path / "truncated.txt"
    with tdfx:
        for word in ("one", "two"):
            run(f"echo {word}", stdout=(str(appended), "a")).result(TIMEOUT)
            run(f"echo {word}", stdout=str(truncated)).result(TIMEOUT)
    assert appended.read_text() == "one\ntwo\n"
    assert truncated.read_text() == "two\n"


def test_stdout_and_stderr_to_one_file(tdfx, tmp_path):
    both = tmp_path / "both.txt"
    with tdfx:
        run("echo a; echo b >&2; echo c", stdout=str(both), stderr=str(both)).result(TIMEOUT)
    assert both.read_text() == "a\nb\nc\n"


def test_bad_stream_targets_fail_at_the_call(tdfx, tmp_path):
    with tdfx:
        with pytest.raises(TypeError, match="stdout must be a path, a \\(path, mode\\) pair"):
            run("true", stdout=3)
        with pytest.raises(ValueError, match="needs a write mode"):
            run("true", stderr=(str(tmp_path / "x"), "r"))


def test_signature_default_stdout_is_used(tdfx, tmp_path):
    @bash_app(executor=tdfx)
    def hello(stdout=str(tmp_path / "default.txt")):
        return "echo from the default"

    assert hello().result(TIMEOUT) == 0
    assert (tmp_path / "default.txt").read_text() == "from the default\n"


def test_bash_outputs_and_inputs_make_a_pipeline(dfx, tmp_path):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    with dfx:
        a = run(f"echo 21 > {first}", outputs=[str(first)])
        assert isinstance(a.outputs[0], DataFuture) and a.outputs[0].filepath == str(first)

        @bash_app
        def double(inputs=(), outputs=()):
            return f"echo $(( $(cat {inputs[0]}) * 2 )) > {outputs[0]}"

        b = double(inputs=[a.outputs[0]], outputs=[File(str(second))])
        assert b.outputs[0].result(TIMEOUT) == File(str(second))
    assert second.read_text() == "42\n"


def test_bash_retries(tdfx, tmp_path):
    marker = tmp_path / "tried"

    @bash_app(executor=tdfx, retries=1)
    def flaky():
        return f"if [ -e {marker} ]; then exit 0; else touch {marker}; exit 5; fi"

    assert flaky().result(TIMEOUT) == 0


# -- python apps: special keywords ------------------------------------------------------------------------


def test_inputs_are_dependencies(dfx):
    with dfx:
        assert takes_inputs(inputs=[add(1, 2), 4, add(5)]).result(TIMEOUT) == [3, 4, 5]


def test_inputs_reach_only_functions_that_take_them(tdfx):
    with tdfx, Gate() as gate:
        dep = wait_at(gate.wait)
        future = no_specials(7, inputs=[dep], outputs=["x"], stdout="y", stderr="z")
        gate.wait_entered(1, timeout=TIMEOUT)
        assert not future.done()  # it waits for its inputs although it does not take them
        gate.open()
        assert future.result(TIMEOUT) == 7
        assert [o.filepath for o in future.outputs] == ["x"]
        # a function with **kwargs takes them all (outputs as Files)
        args, kwargs = seen(1, inputs=[add(2)], outputs=["o"], stdout="s", stderr="e").result(TIMEOUT)
    assert args == (1,)
    assert kwargs == {"inputs": [2], "outputs": [File("o")], "stdout": "s", "stderr": "e"}


def test_python_outputs(dfx, tmp_path):
    @python_app
    def write(text, outputs=()):
        with open(outputs[0], "w") as f:
            f.write(text)
        return type(outputs[0]).__name__

    with dfx:
        future = write("data", outputs=[str(tmp_path / "w.txt")])
        assert future.result(TIMEOUT) == "File"
        assert open(future.outputs[0].result(TIMEOUT)).read() == "data"


def test_failed_app_fails_its_data_futures_and_dependents(tdfx, tmp_path):
    with tdfx:
        bad = run("exit 1", outputs=[str(tmp_path / "never")])
        after = takes_inputs(inputs=[bad.outputs[0]])
        assert isinstance(bad.outputs[0].exception(TIMEOUT), BashExitFailure)
        error = after.exception(TIMEOUT)
    assert isinstance(error, DependencyError)
    assert isinstance(error.__cause__, BashExitFailure)


def test_python_walltime_on_threads_is_refused(tdfx):
    with tdfx:
        with pytest.raises(UnsupportedOptionError, match="walltime"):
            add(1, walltime=5)
    with pytest.raises(UnsupportedOptionError, match="walltime"):
        python_app(executor=tdfx, walltime=5)(lambda: None)


def test_python_walltime_on_htex(htex, tmp_path):
    with DataflowExecutor(htex, run_dir=tmp_path), Gate() as gate:
        future = wait_at(gate.wait, walltime=0.5)
        error = future.exception(TIMEOUT)
        assert isinstance(error, TaskTimeoutError)
        assert add(1, 2, walltime=30).result(TIMEOUT) == 3


# -- join apps ------------------------------------------------------------------------------------------


@join_app
def fibonacci(n):
    if n < 2:
        return add(n)
    return add(fibonacci(n - 1), fibonacci(n - 2))


@join_app
def fan_out(n):
    return [add(i, i) for i in range(n)]


@join_app
def fan_out_with_failure():
    return [add(1), fail("inner boom"), add(2)]


@join_app
def not_a_future():
    return 42


def test_join_app_single_future(dfx):
    with dfx:
        assert fibonacci(7).result(TIMEOUT) == 13


def test_join_app_list(dfx):
    with dfx:
        assert fan_out(4).result(TIMEOUT) == [0, 2, 4, 6]
        assert fan_out(0).result(TIMEOUT) == []


def test_join_app_failure_names_the_inner_task(tdfx):
    with tdfx:
        error = fan_out_with_failure().exception(TIMEOUT)
    assert isinstance(error, JoinError)
    [(task_id, name, inner)] = error.failed
    assert name == "fail" and isinstance(inner, ValueError)
    assert f"task {task_id} (fail)" in str(error)
    assert isinstance(error.__cause__, ValueError)


def test_join_app_must_return_futures(tdfx):
    with tdfx:
        with pytest.raises(TypeError, match="must return a Future or a list of Futures, got int"):
            not_a_future().result(TIMEOUT)


def test_join_app_waits_for_inputs_and_runs_on_the_driver(tdfx):
    threads = []

    @join_app
    def body(x, inputs=()):
        threads.append(threading.current_thread().name)
        return add(x, sum(inputs))  # a bare app inside goes to the join's executor

    joined = join_app(executor=tdfx)(lambda x: add(x, 1))
    assert joined(tdfx.submit(int, 1)).result(TIMEOUT) == 2
    with tdfx:
        assert body(add(1), inputs=[add(10), 20]).result(TIMEOUT) == 31
    assert len(threads) == 1 and threads[0].startswith("hpcfutures-join")


def test_join_app_without_an_inputs_parameter_still_waits_for_them(tdfx):
    @tdfx.join_app
    def body(x):
        return add(x)

    with Gate() as gate:
        blocker = tdfx.submit(gate.wait)
        future = body(1, inputs=[blocker])
        gate.wait_entered(1, timeout=TIMEOUT)
        assert not future.done()
        gate.open()
        assert future.result(TIMEOUT) == 1


# -- binding ----------------------------------------------------------------------------------------------


def test_no_executor_bound():
    with pytest.raises(NoExecutorBoundError) as info:
        add(1, 2)
    message = str(info.value)
    assert "python app add" in message
    assert "with DataflowExecutor(...) as dfx:" in message
    assert "@dfx.python_app" in message and "@python_app(executor=dfx)" in message
    with pytest.raises(NoExecutorBoundError, match="@dfx.bash_app"):
        run("true")


def test_bare_app_binds_at_call_time_to_the_innermost():
    outer = DataflowExecutor(ThreadExecutor(thread_name_prefix="outer"), shutdown_executors=True)
    inner = DataflowExecutor(ThreadExecutor(thread_name_prefix="inner"), shutdown_executors=True)

    @python_app
    def where():
        return threading.current_thread().name

    with outer:
        assert where().result(TIMEOUT).startswith("outer")
        with inner:
            assert where().result(TIMEOUT).startswith("inner")
        assert where().result(TIMEOUT).startswith("outer")
    with pytest.raises(NoExecutorBoundError):
        where()


def test_explicit_binding(tdfx):
    @python_app(executor=tdfx)
    def double(x):
        return 2 * x

    @tdfx.python_app
    def triple(x):
        return 3 * x

    @tdfx.python_app(retries=2, cache=True, ignore_for_cache=["x"])
    def square(x):
        return x * x

    @tdfx.bash_app
    def ok():
        return "true"

    @tdfx.join_app
    def both(x):
        return [double(x), triple(x), square(x)]

    assert double(2).result(TIMEOUT) == 4  # no `with`: each is bound already
    assert triple(2).result(TIMEOUT) == 6
    assert ok().result(TIMEOUT) == 0
    assert both(3).result(TIMEOUT) == [6, 9, 9]
    assert (square.retries, square.cache, square.ignore_for_cache) == (2, True, ("x",))
    assert square.executor is tdfx and square.func(4) == 16
    other = DataflowExecutor(ThreadExecutor(), shutdown_executors=True)
    with other:  # an explicit binding wins over the active executor
        future = double(5)
        assert future.result(TIMEOUT) == 10
        assert tdfx.pending == 0 and other.pending == 0


def test_app_looks_like_its_function():
    assert add.__name__ == "add" and add.__doc__ == "Add two numbers."
    assert add.__wrapped__ is add.func
    assert (add.cache, add.executors, add.retries, add.ignore_for_cache, add.walltime) == (
        False,
        None,
        None,
        (),
        None,
    )
    assert "PythonApp add" in repr(add)


def test_executor_labels_route_to_their_backend(htex, tmp_path):
    dfx = DataflowExecutor(executors={"threads": ThreadExecutor(), "htex": htex}, run_dir=tmp_path)

    @python_app(executors=["htex"])
    def on_htex():
        return os.getpid()

    @python_app(executors="threads")
    def on_threads():
        return os.getpid()

    @bash_app(executors=["htex"])
    def bash_on_htex(outputs=()):
        return f"echo $PPID > {outputs[0]}"

    @python_app(executors="all")
    def anywhere():
        return os.getpid()

    with dfx:
        assert on_htex().result(TIMEOUT) != os.getpid()
        assert on_threads().result(TIMEOUT) == os.getpid()
        future = bash_on_htex(outputs=[str(tmp_path / "ppid")])
        assert int(open(future.outputs[0].result(TIMEOUT)).read()) != os.getpid()
        assert anywhere().result(TIMEOUT) > 0
        with pytest.raises(ConfigurationError, match="unknown executor label"):
            python_app(executors="gpu")(lambda: 1)()
    dfx.executors["threads"].shutdown()
    with DataflowExecutor() as other, pytest.raises(ConfigurationError, match="unknown executor label"):
        python_app(executor=other, executors="gpu")(lambda: 1)  # at decoration, when bound


@pytest.mark.parametrize(
    "option, value",
    [
        ("retries", -1),
        ("retries", "2"),
        ("retries", True),
        ("cache", "yes"),
        ("executors", 3),
        ("executors", [""]),
        ("executors", []),
        ("ignore_for_cache", "x"),
        ("ignore_for_cache", [1]),
        ("walltime", 0),
        ("walltime", "5"),
    ],
)
@pytest.mark.parametrize("decorator", [python_app, bash_app])
def test_decorator_options_are_checked(decorator, option, value):
    with pytest.raises(ConfigurationError, match=f"app option {option} "):
        decorator(**{option: value})


def test_join_app_options_are_checked():
    with pytest.raises(ConfigurationError, match="app option cache"):
        join_app(cache=1)
    with pytest.raises(TypeError):
        join_app(walltime=1)


def test_executor_must_be_a_dataflow_executor():
    with pytest.raises(ConfigurationError, match="must be a DataflowExecutor"):
        python_app(executor=ThreadExecutor())(lambda: 1)
    with pytest.raises(TypeError, match="decorates a function"):
        python_app(3)


def test_bad_call_walltime(tdfx):
    with tdfx:
        with pytest.raises(ConfigurationError, match="walltime must be a positive number"):
            with_walltime("true", walltime=-1)
