"""The benchmark: PyBullet locomotion envs, D4RL-format datasets and their collection, reference scores, behaviour
policies. Depends on :mod:`modzoo.contract` only; training knows it through datasets and envs. Importing it registers
the envs with gymnasium (as gymnasium's env packages do), so ``gymnasium.make("modzoo/bullet-hopper-v0")`` works.
"""
try:
    from .envs import register_envs
except ImportError:  # without its dependencies the ids are simply not registered
    pass
else:
    register_envs()
