"""rnnkit train, eval and generate: training models that use rnnkit's layers.

config.py (TrainConfig, free of torch), errors.py (UserError), data.py, models.py, task.py,
tasks.py, seq2seq.py, registry.py (task and model by name), checkpoint.py, distributed.py,
trainer.py (Trainer, train), runs.py (resume, load, evaluate, generate), plot.py.

This file imports nothing, so that the command line can read config.py without loading torch.
"""
