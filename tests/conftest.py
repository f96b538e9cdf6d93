"""Shared fixtures: real ViRelAy-format projects built in temporary folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relaylab.data.synthetic import Variant, write_virelay_project


@pytest.fixture
def make_project(tmp_path):
    """`make_project(name=..., **variant_fields)` writes a ViRelAy project and returns its YAML path."""
    counter = iter(range(1000))

    def make(name: str = "synthetic", **fields) -> Path:
        return write_virelay_project(tmp_path / f"{name}-{next(counter)}", Variant(**fields), name=name)

    return make


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real `relaylab` command line, in a child process."""
    return subprocess.run([sys.executable, "-m", "relaylab.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> Path:
    """The demo project (relaylab.demo), built once per test session into a temporary folder: its store's path.
    Built fresh rather than taken from a cache, so a new machine (CI) runs every test that needs it."""
    from relaylab.demo import build_demo

    return build_demo(tmp_path_factory.mktemp("demo") / "demo", progress=False)
