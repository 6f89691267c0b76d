"""The benchmark: PyBullet locomotion envs, D4RL-format datasets and their collection, reference scores and
the behaviour policies that generate the data.

Depends on :mod:`modzoo.contract` only; training knows it through datasets and envs.
"""
