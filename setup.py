"""Packaging for hpcfutures.  The version is read from hpcfutures/__init__.py without importing it."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent


def read_version() -> str:
    text = (HERE / "hpcfutures" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.MULTILINE)
    if match is None:
        raise RuntimeError("no __version__ = '...' line in hpcfutures/__init__.py")
    return match.group(1)


# pytest 9.2 stops pytest-xdist's --dist loadgroup from grouping tests (pytest-xdist issue
# #1386: xdist marks a group by editing node ids, which 9.2 no longer honours); the tests that
# share one Slurm or Grid Engine cluster rely on that grouping.
TEST_REQUIRES = ["pytest<9.2", "pytest-xdist", "loky", "numpy", "pyftpdlib", "mpi4py", "prometheus_client"]

setup(
    name="hpcfutures",
    version=read_version(),
    description="concurrent.futures Executors from a laptop to a supercomputer",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["hpcfutures", "hpcfutures.*"]),
    package_data={"hpcfutures": ["py.typed", "monitor/static/*"]},
    install_requires=["cloudpickle", "pyzmq", "psutil", "paramiko", "typing-extensions"],
    extras_require={
        "test": TEST_REQUIRES,
        "mpi": ["mpi4py"],  # MPIExecutor(function_ranks="all"): functions on every rank
        "dev": TEST_REQUIRES + ["mypy", "ruff"],
    },
    entry_points={"console_scripts": ["hpcfutures=hpcfutures.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX",
        "Typing :: Typed",
    ],
)
