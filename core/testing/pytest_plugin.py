"""pytest plugin: ``pytest --modzoo-plugin=NAME`` (repeatable) runs modzoo's conformance suite for the plugin NAME.

Registered under ``pytest11`` (add ``-p modzoo.testing.pytest_plugin`` where autoloading is off), it does nothing
without the option (:mod:`modzoo.testing`, and torch, are imported in the hooks). Each (half, check) is one item,
``modzoo[<kind>:<half>:<check>]``, so ``-k`` selects checks (``-k "policy and learns"``) and a failure names the
check and what broke. A plugin that fails to load (import, hook, a HalfSpec's YAML) is one failed item,
``modzoo[plugin:<name>:load]``, with the error and its traceback; a name nothing registers is a usage error.
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
    """One check of one half, ``case = (kind, half, check)``; or, with ``broken`` (the error), a plugin that failed
    to load, ``("plugin", name, "load")``: a failed item, not an INTERNALERROR that hides which plugin and why."""

    def __init__(self, *, case: tuple[str, str, str], broken: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case, self.broken = case, broken

    def runtest(self) -> None:
        from modzoo.testing import ConformanceError, run_case
        if self.broken is not None:
            raise ConformanceError(self.broken)
        kind, half, check = self.case
        with tempfile.TemporaryDirectory(prefix=f"modzoo-{half}-{check}-") as tmp:
            report = run_case(kind, half, check, Path(tmp), device=self.config.getoption("modzoo_device"))
        if check in report.skipped:  # a check that does not apply must not read as passed
            pytest.skip(report.skipped[check])

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        from modzoo.testing import ConformanceError
        if isinstance(excinfo.value, ConformanceError):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        kind, half, check = self.case
        what = f"loading plugin {half!r}" if self.broken is not None else f"{kind} {half!r}, check {check}"
        return self.path, None, f"modzoo conformance: {what}"


def _plugin_items(session: pytest.Session, plugin: str) -> list[pytest.Item]:
    """The items of one ``--modzoo-plugin``: one per (half, check), or one failed item for a plugin that failed to
    load; a name nothing registers is a usage error (a typo, or a package not installed)."""
    from modzoo.contract.registry import load_registry
    from modzoo.testing import ConformanceError, cases
    try:
        found, broken = cases(plugin), None
    except ConformanceError as e:
        detail = {b.name: b.detail for b in load_registry().broken}
        if plugin not in detail:
            raise pytest.UsageError(f"--modzoo-plugin={plugin}: {e}") from None
        found, broken = [("plugin", plugin, "load")], f"{e}\n\n{detail[plugin]}".rstrip()
    return [ConformanceItem.from_parent(session, name=f"modzoo[{':'.join(case)}]", case=case, broken=broken)
            for case in found]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``--modzoo-plugin``, the session runs the conformance items alone (a project's own tests, collected
    from where pytest was started, are dropped), added before -k/-m selection runs so both apply to them."""
    plugins = config.getoption("modzoo_plugin")
    if plugins:
        items[:] = [item for plugin in plugins for item in _plugin_items(session, plugin)]
