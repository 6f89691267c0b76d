"""One run from config to run dir: config, validation, the training loop, evaluation, checkpoints, resume, seeds."""
