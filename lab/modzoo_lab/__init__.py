"""modzoo's lab: experiment grids, their reports, behaviour-expert training and benchmarks, built on the library.

The lab imports :mod:`modzoo`; the library never imports the lab. ``modzoo experiment`` and ``modzoo data
train-behaviour`` come from here (:mod:`modzoo_lab.cli`, registered as a ``modzoo.commands`` entry point).
"""
