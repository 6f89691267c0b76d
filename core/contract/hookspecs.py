"""The plugin API: pluggy hook specifications a modzoo plugin implements.

A plugin is any importable module (or object) with ``@hookimpl`` functions, advertised under the entry-point group
``modzoo`` in its package's ``pyproject.toml``::

    [project.entry-points.modzoo]
    myalgo = "my_package.my_module"

First-party plugins (``idql``, ``dql`` ...) register through the very same group. Each hook returns a list of
:class:`~modzoo.contract.registry.HalfSpec`; a plugin may implement one hook or both. The contract the returned classes
keep is in :mod:`modzoo.contract.interfaces` and CONTRIBUTING.md; :mod:`modzoo.testing` checks it
(``pytest --modzoo-plugin=NAME``), and ``modzoo plugin new NAME`` scaffolds a package that passes it.
"""
from __future__ import annotations

import pluggy

PROJECT = "modzoo"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def modzoo_guidances() -> list:
    """Return the guidance halves this plugin contributes, as :class:`~modzoo.HalfSpec` objects.

    Each spec's class must subclass :class:`modzoo.GuidanceModule`, take ``(obs_dim, act_dim, cfg)`` and keep
    the contract in :mod:`modzoo.contract.interfaces`. Its ``config`` is a YAML file (or dict) whose
    ``guidance:`` section holds every key the class reads, with defaults (a key not there is rejected as a typo).
    """


@hookspec
def modzoo_policies() -> list:
    """Return the policy halves this plugin contributes, as :class:`~modzoo.HalfSpec` objects.

    Each class must subclass :class:`modzoo.DiffusionPolicy`; its ``needs`` names the guidance capabilities
    (``"q"``, ``"v"``) it uses, which decides the guidances it can pair with.
    """
