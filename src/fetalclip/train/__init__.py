"""Contrastive pretraining: ``train(config, run_dir)`` runs single-process or under torchrun, one code path.

Modules: ``config`` (the recipe), ``distributed`` (reads torchrun's environment), ``data`` (image-text pairs from
any dataset spec or shard folder, in a seeded, resumable order), ``modeling`` (start model, ``--init``), ``optim``,
``schedule``, ``checkpointing``, ``hooks`` (evaluation callables), ``runlog`` and ``loop``.
``torchrun -m fetalclip train`` (the package's ``__main__``) is the ``fetalclip train`` command.
"""

from .config import TrainConfig, make_config
from .hooks import EvalHook, RetrievalHook
from .loop import TrainResult, train

__all__ = ["EvalHook", "RetrievalHook", "TrainConfig", "TrainResult", "make_config", "train"]
