"""awr: an example modzoo plugin (advantage-weighted diffusion BC). Its hooks are in :mod:`modzoo_awr.plugin`."""
