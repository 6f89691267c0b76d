"""pytest plugin: ``pytest --modzoo-plugin=NAME`` runs modzoo's conformance suite for the plugin NAME.

modzoo registers this module under the ``pytest11`` entry-point group, so it is active in every pytest run of
an environment where modzoo is installed (it does nothing unless the option is given). Where entry-point
autoloading is off (``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``), load it by hand: ``pytest -p modzoo.testing.pytest_plugin
--modzoo-plugin=NAME``.

Each (half, check) pair of :mod:`modzoo.testing` becomes one test item named
``modzoo[<kind>:<half>:<check>]``, so ``-k`` selects checks (``-k "policy and learns"``) and a failure names
the check and what broke. A plugin that fails to load (import, hook, a HalfSpec's YAML) is one failed item,
``modzoo[plugin:<name>:load]``, with the error and its traceback; a name nothing registers is a usage error. The
option can be repeated to check several plugins.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("modzoo", "modzoo plugin conformance")
    group.addoption("--modzoo-plugin", action="append", default=[], metavar="NAME",
                    help="run modzoo's conformance suite (modzoo.testing) on every half of the plugin NAME "
                         "(an entry-point name in the 'modzoo' group); repeatable")
    group.addoption("--modzoo-device", default="cpu", metavar="DEVICE",
                    help="device for --modzoo-plugin checks (default cpu)")


class ConformanceItem(pytest.Item):
    """One check of one half."""

    def __init__(self, *, kind: str, half: str, check: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind, self.half, self.check = kind, half, check

    def runtest(self) -> None:
        from modzoo.testing import run_case
        with tempfile.TemporaryDirectory(prefix=f"modzoo-{self.half}-{self.check}-") as tmp:
            report = run_case(self.kind, self.half, self.check, Path(tmp),
                              device=self.config.getoption("modzoo_device"))
        if self.check in report.skipped:  # a check that does not apply must not read as passed
            pytest.skip(report.skipped[self.check])

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        from modzoo.testing import ConformanceError
        if isinstance(excinfo.value, ConformanceError):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"modzoo conformance: {self.kind} {self.half!r}, check {self.check}"


class BrokenPluginItem(pytest.Item):
    """A plugin that failed to load (import, hook or YAML): one failed item with the error and its traceback,
    rather than an INTERNALERROR from collection that hides which plugin and why."""

    def __init__(self, *, plugin: str, message: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plugin, self.message = plugin, message

    def runtest(self) -> None:
        from modzoo.testing import ConformanceError
        raise ConformanceError(self.message)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        return self.message

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"modzoo conformance: loading plugin {self.plugin!r}"


def _plugin_items(session: pytest.Session, plugin: str) -> list[pytest.Item]:
    """The items of one ``--modzoo-plugin``: one per (half, check), or one failed item for a plugin that failed to
    load; a name nothing registers is a usage error (a typo, or a package not installed)."""
    from modzoo.contract.registry import load_registry
    from modzoo.testing import ConformanceError, cases
    try:
        found = cases(plugin)
    except ConformanceError as e:
        broken = {b.name: b for b in load_registry().broken}
        if plugin not in broken:
            raise pytest.UsageError(f"--modzoo-plugin={plugin}: {e}") from None
        message = f"{e}\n\n{broken[plugin].detail}".rstrip()
        return [BrokenPluginItem.from_parent(session, name=f"modzoo[plugin:{plugin}:load]", plugin=plugin,
                                            message=message)]
    return [ConformanceItem.from_parent(session, name=f"modzoo[{kind}:{half}:{check}]", kind=kind, half=half,
                                        check=check) for kind, half, check in found]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``--modzoo-plugin``, the session runs the conformance items alone (a project's own tests, collected
    from where pytest was started, are dropped), added before -k/-m selection runs so both apply to them."""
    plugins = config.getoption("modzoo_plugin")
    if plugins:
        items[:] = [item for plugin in plugins for item in _plugin_items(session, plugin)]
