"""The benchmark: PyBullet locomotion envs, D4RL-format datasets and their collection, reference scores and
the behaviour policies that generate the data.

Depends on :mod:`modzoo.contract` only; training knows it through datasets and envs. Importing it registers the
envs with gymnasium.
"""


def _register_envs() -> None:
    """Make ``modzoo/bullet-<robot>-v0`` known to ``gymnasium.make`` as soon as the benchmark is imported (as
    gymnasium's own env packages do); without pybullet the ids are simply not registered."""
    try:
        from .envs import register_envs
    except ImportError:
        return
    register_envs()


_register_envs()
