"""Experiment grids: planning runs and swaps from an experiment YAML, running them on a pool or Ray, and the
generated report."""
