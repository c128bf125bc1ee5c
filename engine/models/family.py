"""The model-family seam: what a model family (XTTS-v2, F5-TTS, ...) gives the rest of Timbre.

A family is one package under ``engine/models/`` whose ``FAMILY`` object is a
:class:`ModelFamily`. Everything else (dataset, run folders, checkpoints, the training loop,
metrics, scoring, the UI) stays family-neutral and reaches the model only through this
interface; ``engine.models.get_family`` / ``family_of`` pick the family by name or by the files
of a base-model folder.

The training side is a :class:`Trainee`: the one ``torch.nn.Module`` that is trained and
checkpointed (its ``state_dict`` is ``model.safetensors`` of a checkpoint), its training and
validation samples (anything with a ``seconds`` attribute, which the duration-bucketed batch
plan reads, and ``frames`` for batches counted in frames), and the family's collate and loss.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class Trainee:
    """What a family hands the training loop for one run.

    Attributes:
        module: the trained ``nn.Module`` (weights saved as the checkpoint's model.safetensors;
            ``load_state_dict(strict=True)`` on resume).
        train_set / val_set: samples with ``.seconds`` (float, audio length) and ``.frames``
            (int, length in the family's batch unit, e.g. mel frames); problems: dataset-check
            lines (file and reason) for the samples left out.
        collate: ``(samples, rng) -> dict[str, Tensor]``; ``rng`` (a ``random.Random``, None for
            validation) drives any random choice, so a batch is a function of its seed.
        losses: ``(module, batch_on_device) -> dict[str, Tensor]`` of scalar loss terms, the
            key ``"loss"`` being the one back-propagated; every other key is logged in
            metrics.jsonl as it is (e.g. ``loss_text_ce``, ``loss_mel_ce``; ``loss_flow``).
        freeze_groups: ``{name: [modules]}`` that train.yaml's ``freeze`` may name.
        enable_gradient_checkpointing: turns on activation recomputation in ``module``'s
            blocks (train.yaml ``gradient_checkpointing``); None: the family has none.
        info: a line for the run log (what was loaded, features cached).
    """

    module: torch.nn.Module
    train_set: list
    val_set: list
    problems: list[str]
    collate: Callable[[Sequence[Any], random.Random | None], dict[str, torch.Tensor]]
    losses: Callable[[torch.nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    freeze_groups: dict[str, list[torch.nn.Module]] = field(default_factory=dict)
    enable_gradient_checkpointing: Callable[[torch.nn.Module], None] | None = None
    info: str = ""


class ModelFamily:
    """One model family. Subclasses set the class attributes and implement the methods.

    Attributes:
        name: the family's id in train.yaml (``family``), CLI flags and folders ("xtts", "f5").
        title: shown in the UI ("XTTS-v2", "F5-TTS v1").
        license_name / license_summary: the base weights' licence, shown before a download.
        output_sample_rate: Hz of generated audio.
        loss_terms: the metrics keys the trainer logs per step besides ``loss`` (UI plots them).
        freeze_group_names: the names train.yaml's ``freeze`` accepts.
        config_defaults: TrainConfig field values for a new run of this family (the authors'
            fine-tuning recipe); ``engine config`` and the Training form start from them.
    """

    name: str = ""
    title: str = ""
    license_name: str = ""
    license_summary: str = ""
    output_sample_rate: int = 24000
    loss_terms: tuple[str, ...] = ()
    freeze_group_names: tuple[str, ...] = ()
    config_defaults: dict[str, Any] = {}

    # ---- base-model folder -------------------------------------------------------------------
    def detect(self, directory: Path) -> bool:
        """Whether ``directory`` looks like a base-model folder of this family (by its files)."""
        raise NotImplementedError

    def missing_files(self, directory: Path) -> list[str]:
        """Required files absent from ``directory`` (empty: ready)."""
        raise NotImplementedError

    def write_random_model(self, directory: Path, size: str = "tiny", seed: int = 0) -> Path:
        """A randomly initialised model of ``size`` ("tiny" | "full") with this family's file
        layout; returns ``directory``. Raises ValueError for an unknown size."""
        raise NotImplementedError

    # ---- training ----------------------------------------------------------------------------
    def trainee(self, cfg, base: Path, device: torch.device, log: Callable[[str], None]) -> Trainee:
        """Load the base model (and ``cfg.init_weights``) for training on ``device`` and build
        the samples of ``cfg.dataset_dir()``'s train.csv and validation.csv with their cached
        features. Raises ``engine.training.data.DatasetCheckError`` / ``TrainingError`` naming
        the file and reason."""
        raise NotImplementedError

    # ---- generation, export and import ---------------------------------------------------------
    def make_synthesizer(self, model_dir: Path, device: str | None = None):
        """A synthesizer of this family with engine.generate.synthesis.Synthesizer's interface
        (``load``, ``conditioning``, ``synthesize``, ``stream``, ``warm_up``, ``unload``)."""
        raise NotImplementedError

    def export_run(self, voice: str, run: str, weights, out, report, log, **options) -> Path:
        """Pack a run's checkpoint (``weights``: engine.generate.weights.ModelWeights) into the zip
        ``out`` (None: engine.generate.export.export_path) that the family's own library loads."""
        raise NotImplementedError

    def is_export(self, members: set[str]) -> bool:
        """Whether a zip with these member paths is an export of this family."""
        raise NotImplementedError

    def import_export(self, zip_path: Path, target: Path, log: Callable[[str], None]) -> Path:
        """Unpack an export of this family into ``target`` (which does not exist yet)."""
        raise NotImplementedError
