"""The package list in pyproject.toml covers the tree (a normal, non-editable install once missed subpackages)."""

import os

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_every_package_directory_is_listed():
    setuptools = _config()["tool"]["setuptools"]
    dirs = setuptools["package-dir"]
    found = set()
    for top, path in (("gcomp", "gcomp"), ("gcomp.kernels", "kernels")):
        for here, subdirs, files in os.walk(os.path.join(ROOT, path)):
            subdirs[:] = [d for d in subdirs if d != "__pycache__"]
            if "__init__.py" in files:
                rel = os.path.relpath(here, os.path.join(ROOT, path))
                found.add(top if rel == "." else f"{top}.{rel.replace(os.sep, '.')}")
    assert dirs["gcomp.kernels"] == "kernels"
    assert set(setuptools["packages"]) == found


def test_the_main_job_needs_no_extra():
    """`gcomp train` loads the digits with scikit-learn and plots with matplotlib: both are base dependencies."""
    deps = " ".join(_config()["project"]["dependencies"])
    for name in ("numpy", "numba", "torch", "zstandard", "scikit-learn", "matplotlib"):
        assert name in deps, name
