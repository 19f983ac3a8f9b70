"""Training: the loop (`loop.fit`), EMA, crash-safe checkpoints, DDP set-up and logging.

`python -m sde.train` (sde/train.py) builds the objects from the Hydra config and calls
`sde.training.loop.fit`; nothing in this package reads the config.
"""
