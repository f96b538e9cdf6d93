"""Every module of relaylab imports. Cheap, and not `slow`: `./dev test --fast` touches every module, even one whose
other tests are all slow."""

import importlib
import pkgutil

import pytest

import relaylab

MODULES = sorted(info.name for info in pkgutil.walk_packages(relaylab.__path__, "relaylab."))


def test_the_walk_finds_every_stage():
    assert {"relaylab.cli", "relaylab.demo.build", "relaylab.explore.app", "relaylab.analyze.config",
            "relaylab.data.store", "relaylab.explain.jobs"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    assert importlib.import_module(name).__name__ == name
