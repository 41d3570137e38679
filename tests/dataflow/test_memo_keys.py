"""The keys package and its place in the import graph: names kept in memo, one way to name a
callable, AUTO_LOGNAME in files, and no import of the engine or the apps from below."""

from __future__ import annotations

import ast
import functools
import pickle
from pathlib import Path

import hpcfutures.dataflow as dataflow
from hpcfutures.dataflow import apps, files, memo
from hpcfutures.dataflow.keys import fingerprint, normalise
from hpcfutures.dataflow.keys.fingerprint import callable_identity

DATAFLOW = Path(dataflow.__file__).parent

# The modules of caching, and what each may import of the dataflow package: they sit under
# the engine (executor), the apps and the futures, so they never import those.
CACHING_MODULES = ("files.py", "memo.py", "caching.py", "keys/__init__.py", "keys/normalise.py", "keys/fingerprint.py")
MAY_IMPORT = {
    "hpcfutures.dataflow.files",
    "hpcfutures.dataflow.checkpoint",
    "hpcfutures.dataflow.memo",
    "hpcfutures.dataflow.keys",
    "hpcfutures.dataflow.keys.normalise",
    "hpcfutures.dataflow.keys.fingerprint",
}


def _imports(relative: str) -> set[str]:
    """Every hpcfutures.dataflow module ``relative`` imports, at the top or in a function."""
    path = DATAFLOW / relative
    package = ("hpcfutures.dataflow." + relative[: -len(".py")].replace("/", ".")).removesuffix(".__init__")
    if not relative.endswith("__init__.py"):
        package = package.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if node.module is None:  # from . import x: x is a submodule
                found.update(f"{module}.{alias.name}" for alias in node.names)
            else:
                found.add(module)
    return {name for name in found if name.startswith("hpcfutures.dataflow.")}


def test_the_caching_modules_never_import_the_engine_the_apps_or_the_futures():
    for relative in CACHING_MODULES:
        imported = _imports(relative)
        assert imported <= MAY_IMPORT, f"{relative} imports {sorted(imported - MAY_IMPORT)}"


def test_the_caching_modules_import_one_another_without_a_cycle():
    names = {("hpcfutures.dataflow." + r[:-3].replace("/", ".")).removesuffix(".__init__"): r for r in CACHING_MODULES}
    edges = {name: _imports(relative) & set(names) for name, relative in names.items()}
    # A package imports its submodules and they import the package first; that is no cycle.
    edges["hpcfutures.dataflow.keys.normalise"].discard("hpcfutures.dataflow.keys")
    edges["hpcfutures.dataflow.keys.fingerprint"].discard("hpcfutures.dataflow.keys")
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for target in edges[name]:
            visit(target, (*path, name))
        done.add(name)

    for name in edges:
        visit(name, ())


def test_memo_keeps_its_public_names():
    assert memo.normalise is normalise.normalise
    assert memo.register_cache_key is normalise.register_cache_key
    assert memo.CacheKeyError is normalise.CacheKeyError
    assert memo.function_fingerprint is fingerprint.function_fingerprint
    for name in memo.__all__:
        assert getattr(memo, name) is not None


def test_auto_logname_is_one_object_defined_with_file():
    assert apps.AUTO_LOGNAME is files.AUTO_LOGNAME
    assert pickle.loads(pickle.dumps(files.AUTO_LOGNAME)) is files.AUTO_LOGNAME
    assert repr(files.AUTO_LOGNAME) == "AUTO_LOGNAME"


class Tool:
    def run(self) -> None: ...

    def __call__(self) -> None: ...


def work(x: int) -> int:
    return x


def test_callable_identity_names_what_is_called():
    assert callable_identity(work) == (__name__, "work")
    assert callable_identity(functools.partial(functools.partial(work, 1))) == (__name__, "work")
    assert callable_identity(Tool().run) == (__name__, "Tool.run")
    assert callable_identity(Tool()) == (__name__, "Tool")
    assert callable_identity(len) == ("builtins", "len")
    assert callable_identity(str.join) == ("builtins", "str.join")
    assert callable_identity(lambda: 0)[1].endswith("<lambda>")


def test_there_is_one_identity_function():
    for module in (memo, fingerprint, normalise, dataflow.caching):
        assert not hasattr(module, "_identity"), module.__name__


def test_a_function_argument_is_keyed_by_its_fingerprint():
    # The conversion of functions lives with the fingerprints, and registers itself.
    assert normalise.normalise(work) == ["function", fingerprint.function_fingerprint(work)]
    partial = functools.partial(work, 1)
    assert normalise.normalise(partial) == ["function", fingerprint.function_fingerprint(partial)]
