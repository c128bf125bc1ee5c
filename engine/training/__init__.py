"""Fine-tuning XTTS-v2's GPT: the training loop and the process that runs it.

``loop`` is the trainer's entry (``python -m engine train train.yaml``, under ``torchrun``
for more than one GPU); ``data`` and ``checkpoint`` are its helpers. ``process`` is the one
owner of the training subprocess (start, stop, watch, reattach); the state of a run is read
from its folder by ``engine.runs``.
"""
