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
    """Writing a run's files failed (a full disk, an I/O error, a read-only file system): what was being written,
    why, and how much space it needed, with the files already on disk left as they were. Also an ``OSError``, so
    code that handles failed writes as such still does."""


class AlreadyFinished(ModzooError):
    """``resume`` found a finished run (its ``result.json`` exists): there is nothing to continue, and nothing was
    changed. An exception rather than a silent return, because a caller asked for training that did not happen;
    the CLI reports it as a notice and exits 0."""


class PluginFailure(PluginError):
    """An exception raised inside a plugin's own code while a run trained or evaluated, attributed: which half,
    which plugin (and the distribution that installed it), which phase and step. The original exception is its
    ``__cause__`` (``--debug`` shows both tracebacks). A user can act on the line alone: the plugin to report to
    and the step to reproduce it at."""


class NonFiniteError(ModzooError):
    """A training metric (a half's loss) or a value the policy reads from its guidance was NaN or infinite, and
    ``run.on_nonfinite`` is ``stop``: the run stopped before saving anything past its last good state, and wrote
    no score. A user error in the sense that the fix is theirs (a learning rate, a plugin's maths), not modzoo's."""


class RunStopped(ModzooError):
    """SIGINT or SIGTERM reached ``modzoo run`` / ``train-guidance``: the run saved its resume state at the next
    step boundary (``saved``) and stopped, so that a preemption or a closed terminal costs no training. The CLI
    prints one line with the resume command and exits ``128 + signum`` (130, 143), as a shell reports a process
    ended by that signal, so that schedulers see a stop, not a success."""

    def __init__(self, signum: int, where: str = "", saved: bool = True) -> None:
        self.signum, self.where, self.saved = int(signum), where, saved
        super().__init__(where)
