"""Errors a user can cause and fix.

Every exception raised for bad input (unknown plugin, wrong shapes, missing dataset, corrupt checkpoint)
subclasses :class:`ModzooError`. The CLI prints ``str(err)`` as one line and exits non-zero, so the message
must name the problem *and* the fix; a traceback is shown only with ``--debug``.
"""
from __future__ import annotations


class ModzooError(Exception):
    """Base class: a problem with the user's input or environment, not a bug in modzoo."""


class ConfigError(ModzooError):
    """A config key, value or combination of options is wrong."""


class PluginError(ModzooError):
    """An unknown plugin, a plugin that failed to load, or an incompatible guidance/policy pair."""


class DatasetError(ModzooError):
    """A dataset is missing, corrupt, or does not match its environment."""


class CheckpointError(ModzooError):
    """A checkpoint is missing, corrupt, or does not fit what it is being loaded into."""


class EnvError(ModzooError):
    """An unknown task or environment name."""


class StorageError(ModzooError, OSError):
    """Writing a run's files failed (a full disk, an I/O error, a read-only file system); the files already on disk
    are left as they were. Also an ``OSError``, so code that handles failed writes as such still does."""


class AlreadyFinished(ModzooError):
    """``resume`` found a finished run (its ``result.json``): nothing to continue, nothing changed. An exception, not
    a silent return, because a caller asked for training that did not happen; the CLI prints it and exits 0."""


class PluginFailure(PluginError):
    """An exception raised inside a plugin's own code while a run trained or evaluated, attributed (half, plugin and
    the distribution that installed it, phase, step) so that a user knows whom to report it to and where it
    reproduces. The original exception is its ``__cause__`` (``--debug`` shows both tracebacks)."""


class NonFiniteError(ModzooError):
    """A half's loss or a value the policy reads from its guidance was NaN or infinite with ``run.on_nonfinite:
    stop``: the run stopped, saving nothing past its last good state. The fix is the user's (a learning rate, a
    plugin's maths)."""


class RunStopped(ModzooError):
    """SIGINT or SIGTERM reached a training run: it saved its resume state at the next step boundary (``saved``)
    and stopped, so that a preemption costs no training. The CLI prints the resume command and exits
    ``128 + signum``, as a shell reports a process ended by that signal, so that schedulers see a stop."""

    def __init__(self, signum: int, where: str = "", saved: bool = True) -> None:
        self.signum, self.where, self.saved = int(signum), where, saved
        super().__init__(where)
