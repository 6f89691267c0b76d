"""Building blocks a plugin assembles: networks and activations, the Gaussian diffusion, candidate selection,
optimizer helpers, and the two bases most halves derive from (``DDPMPolicy``, ``TwinCriticGuidance``).

Depends only on :mod:`modzoo.contract`.
"""
