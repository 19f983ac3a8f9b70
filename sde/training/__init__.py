"""Training: the loop (`loop.fit`), EMA, DDP batches, and `runner.train_run` around them.

`python -m sde.train` (sde/train.py) builds the objects from the Hydra config and calls
`sde.training.runner.train_run`; nothing in this package reads the config. What is shared with
inference (checkpoints, metrics.json, logging, figures, process groups) lives in `sde.runs`;
`sde.training.checkpoint`, `.logging`, `.samples` and `.distributed` re-export it.
"""
