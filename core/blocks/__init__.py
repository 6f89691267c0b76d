"""Building blocks a plugin assembles: networks and activations, the diffusions, candidate selection, optimizer
helpers, and the bases most halves derive from (``DDPMPolicy``, ``TwinCriticGuidance``). Depends only on
:mod:`modzoo.contract`.
"""
