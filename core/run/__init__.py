"""One run from config to run dir: configs and presets, validation, the training loop and its schedules,
evaluation, checkpoints, resume, seeds trained as a stacked ensemble.
"""
