"""Which weights speak: the base XTTS-v2 model, a run's checkpoint, or an imported model,
resolved to files (:func:`resolve_model`), and reading an XTTS ``model.pth``.

A run's checkpoint holds only the fine-tuned GPT (``model.safetensors``); the decoder, DVAE and
tokenizer come from the base model named in its train.yaml. An imported model
(``models/imported/<name>/``, from :func:`engine.generate.export.import_model`) is a whole XTTS-v2 folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import models, paths, runs
from engine.errors import TimbreError
from engine.generate import conditioning

#: The base model's own weights, instead of a run.
BASE_MODEL = "base model"
#: Model names of imported models: ``imported:<name>`` (run names cannot hold a colon).
IMPORTED_PREFIX = "imported:"


class GenerationError(TimbreError, ValueError):
    """Generation cannot run (no reference audio, empty text, unknown run, checkpoint or model)."""


@dataclass(frozen=True)
class ModelWeights:
    """What speaks, resolved to files.

    ``model_dir``: an XTTS-v2 folder (the base model or an imported model); its ``model.pth``
    holds the decoder and, when ``gpt`` is None, the GPT. ``gpt``: a run checkpoint's
    ``model.safetensors`` (GPT weights only), or None. ``model``: the name the UI shows and
    outputs record (:data:`BASE_MODEL`, a run name, or ``imported:<name>``). ``checkpoint``:
    the ``step-NNNNNNN`` a run's "latest" meant, else None.
    """

    model_dir: Path
    gpt: Path | None = None
    model: str = BASE_MODEL
    checkpoint: str | None = None

    def identity(self) -> str:
        """Names the GPT weights (path, size, mtime of the file holding them): the latents' cache key."""
        if self.gpt is None and not (self.model_dir / "model.pth").is_file():
            from engine.models.f5.files import weights_file

            found = weights_file(self.model_dir)  # an F5-TTS folder
            if found is not None:
                return conditioning.file_identity(found)
        return conditioning.file_identity(self.gpt or self.model_dir / "model.pth")


def imported_models_dir() -> Path:
    """``models/imported/``: models imported from a Timbre export zip, one folder each."""
    return paths.models_dir() / "imported"


def imported_model_dir(name: str) -> Path:
    """``models/imported/<name>/``. Raises InvalidNameError for an unsafe name."""
    return imported_models_dir() / paths.check_name(name, "model name")


def list_imported_models() -> list[str]:
    """Names of the imported models (folders of models/imported/ holding a complete model of
    either family), sorted."""
    base = imported_models_dir()
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if not p.name.startswith(".") and is_model_folder(p))


def checkpoint_weights(voice: str, run: str | None, checkpoint: str = "latest") -> Path | None:
    """``model.safetensors`` of a run's checkpoint (None for the base model). Raises GenerationError."""
    if not run or run == BASE_MODEL:
        return None
    run_dir = paths.run_dir(voice, run)
    if not run_dir.is_dir():
        raise GenerationError(f"voice {voice!r} has no run {run!r}")
    try:
        info = runs.find_checkpoint(run_dir, checkpoint or "latest")
    except (FileNotFoundError, ValueError) as exc:
        raise GenerationError(str(exc)) from None
    return info.path / "model.safetensors"


def run_base_model(voice: str, run: str) -> Path:
    """The base-model folder a run was trained from (its train.yaml), which its weights need."""
    from engine.config import TrainConfig

    return TrainConfig.load(paths.run_dir(voice, run) / "train.yaml").base_model_dir()


def resolve_model(
    voice: str, model: str | None = None, checkpoint: str = "latest", base_model: str | Path | None = None
) -> ModelWeights:
    """The files behind a model name: :data:`BASE_MODEL` (or None), a run of ``voice`` with its
    ``checkpoint`` ("latest" or "step-NNNNNNN"), or ``imported:<name>``.

    ``base_model`` (default models/xtts-v2/) is the base model's folder; a run uses the base
    model of its train.yaml when that folder is complete, else ``base_model``.
    Raises GenerationError (unknown run, checkpoint or imported model), InvalidNameError.
    """
    base = Path(base_model) if base_model else paths.default_base_model_dir()
    if not model or model == BASE_MODEL:
        return ModelWeights(base)
    if model.startswith(IMPORTED_PREFIX):
        folder = imported_model_dir(model[len(IMPORTED_PREFIX) :])
        if not is_model_folder(folder):
            raise GenerationError(f"no imported model {model[len(IMPORTED_PREFIX) :]!r} in {imported_models_dir()}")
        return ModelWeights(folder, None, model)
    weights = checkpoint_weights(voice, model, checkpoint)
    run_base = run_base_model(voice, model)
    if model_ready(run_base):
        base = run_base
    return ModelWeights(base, weights, model, weights.parent.name)


def is_model_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a model's weights: an XTTS ``model.pth`` or an F5-TTS folder."""
    return (Path(folder) / "model.pth").is_file() or models.family_of(folder) == "f5"


def model_ready(folder: Path) -> bool:
    """Whether ``folder`` holds a complete model of its family (engine.models.family_of)."""
    family = models.get_family(models.family_of(folder))
    return Path(folder).is_dir() and not family.missing_files(Path(folder))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The ``"model"`` state dict of an XTTS ``model.pth`` ({"model": state_dict}), memory-mapped
    (tensors are read from disk when used); coqui trainer checkpoints' ``xtts.`` prefix is dropped.
    Raises models.BaseModelError when the file holds no state dict."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # the hub's original file pickles an XttsConfig; coqui's loader allows it
        from TTS.tts.models.xtts import _legacy_safe_globals

        with _legacy_safe_globals():
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise models.BaseModelError(f"{path}: not an XTTS model file (no 'model' state dict)")
    return {k.removeprefix("xtts."): v for k, v in state.items()}


def architecture(model_dir: Path) -> dict:
    """config.json's model_args and audio, without file paths: equal for interchangeable GPTs."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    args = {k: v for k, v in config.get("model_args", {}).items() if not k.endswith(("_file", "_checkpoint", "_path"))}
    return {"model_args": args, "audio": config.get("audio")}
