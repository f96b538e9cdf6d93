"""Shared fixtures: real ViRelAy-format projects built in temporary folders, the demo built once per session, a Dask
cluster shared by the tests that need one, and the command line run in-process (`cli`). Plain helpers are in
tests/helpers.py.

Tests that use the demo (`demo_store`) or a headless browser (`browser`) are marked `slow` here, by the fixture they
use: `./dev test --fast` (pytest -m "not slow") leaves them out."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from relaylab.data.synthetic import Variant, write_virelay_project

from .helpers import call_cli, run_cli  # noqa: F401  (run_cli: tests/test_grid.py still imports it from here)

# The generated-project and mutation tests (hypothesis): "ci", the default, is derandomized (the same examples on
# every run) and sized for CI's budget, each test a multiple of max_examples; `pytest --hypothesis-profile long`
# draws ten times as many, fresh ones each run.
_HYPOTHESIS = dict(deadline=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=100, derandomize=True, database=None, **_HYPOTHESIS)
settings.register_profile("long", max_examples=1000, **_HYPOTHESIS)
settings.load_profile("ci")  # pytest's --hypothesis-profile, applied after this file is imported, overrides it

SLOW_FIXTURES = {"demo_store", "browser"}  # building the demo (a trained CNN, LRP, SpRAy); driving chromium


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def make_project(tmp_path):
    """`make_project(name=..., **variant_fields)` writes a ViRelAy project and returns its YAML path."""
    counter = iter(range(1000))

    def make(name: str = "synthetic", **fields) -> Path:
        return write_virelay_project(tmp_path / f"{name}-{next(counter)}", Variant(**fields), name=name)

    return make


@pytest.fixture
def cli(capsys, monkeypatch):
    """`cli(*args)`: `relaylab.cli.main` in this process, returning (returncode, stdout, stderr) like `run_cli`."""
    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", "warning")  # main sets it; restored afterwards
    return partial(call_cli, capsys)


@pytest.fixture(scope="session")
def dask_cluster():
    """A LocalCluster of two single-threaded worker processes, started once for the tests that compute on one."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> Path:
    """The demo project (relaylab.demo), built once per test session into a temporary folder: its store's path.
    Built fresh rather than taken from a cache, so a new machine (CI) runs every test that needs it."""
    from relaylab.demo import build_demo

    return build_demo(tmp_path_factory.mktemp("demo") / "demo", progress=False)
