"""A training run: the completion of its Config for the device, ranks and data; the loop
(:class:`~fastebm.run.trainer.Trainer`) and its state and checkpoints, the run folder and log, divergence recovery,
signals, the learning-rate schedule, DDP and the CPU threads it takes.
"""
