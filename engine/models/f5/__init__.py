"""The F5-TTS v1 model family (f5-tts 1.1.22, MIT code; weights CC-BY-NC-4.0).

F5-TTS is a flow-matching text-to-speech model: a ``CFM`` wrapper around a ``DiT`` transformer
that fills in masked mel-spectrogram frames from the text and the unmasked frames; the Vocos
vocoder turns the mel spectrogram into 24 kHz audio. Timbre drives ``CFM``/``DiT`` with its own
loop (f5_tts's Trainer assumes a source checkout and saves without RNG state).

Base-model folder layout (:mod:`engine.models.f5.files`)::

    model.safetensors          CFM weights in the hub's key format ("ema_model.transformer...."),
                               loadable by f5_tts.infer.utils_infer.load_model / load_checkpoint;
                               the hub's own name, model_1250000.safetensors (any model_*.safetensors
                               or F5 checkpoint model_*.pt), is accepted too
    vocab.txt                  one token per line, " " first (F5's "custom" tokenizer file)
    model.yaml                 optional, F5's config format: model.arch (dim, depth, heads, ff_mult,
                               text_dim, conv_layers, ...) and model.mel_spec; without it the arch
                               is f5_tts/configs/F5TTS_v1_Base.yaml's (the hub model's)
    vocoder/config.yaml        Vocos (charactr/vocos-mel-24khz layout)
    vocoder/pytorch_model.bin
    TINY_RANDOM_MODEL.json     only in random models (size, dimensions, seed)

Modules: :mod:`.files` (folder, download, random model, loading), :mod:`.train` (samples,
cached mels, collate, loss, freeze groups), :mod:`.generate` (:func:`synthesize`),
:mod:`.export` (export zip, import). Importing this package imports neither f5_tts nor vocos.
"""

from __future__ import annotations

from pathlib import Path

from engine.models.f5.files import (
    RANDOM_MODEL_MARKER,
    RANDOM_MODEL_SIZES,
    F5ModelError,
    detect,
    download_base_model,
    is_random_model,
    missing_files,
    write_random_model,
)
from engine.models.family import ModelFamily, Trainee

LICENSE_NAME = "Creative Commons Attribution-NonCommercial 4.0 (CC-BY-NC-4.0)"
LICENSE_SUMMARY = (
    "F5-TTS v1's weights (SWivid/F5-TTS) are released under CC-BY-NC-4.0, because of the Emilia "
    "training data: use, fine-tuning and sharing of the model and its outputs are allowed for "
    "non-commercial purposes only, with attribution. The code (f5-tts) is MIT and the Vocos "
    "vocoder (charactr/vocos-mel-24khz) MIT. Read https://creativecommons.org/licenses/by-nc/4.0/ "
    "before downloading."
)

#: The DiT module groups that train.yaml's ``freeze`` may name (:func:`engine.models.f5.train.freeze_groups`).
FREEZE_GROUP_NAMES = ("text_embedding", "input_embedding", "time_embedding", "transformer_blocks", "output")

#: The authors' fine-tuning recipe as TrainConfig values. Sources: f5_tts/train/finetune_cli.py
#: (learning_rate 1e-5, batch_size_per_gpu 3200 with batch_size_type "frame", max_grad_norm 1.0);
#: f5_tts/model/trainer.py (``AdamW(model.parameters(), lr=...)``: torch's default weight decay
#: 0.01 on every parameter; LinearLR warm-up then linear decay); f5_tts/model/dataset.py (clips of
#: 0.3-30 s). Warm-up: finetune_cli's 20 000 updates are sized for pre-training; a fine-tune of a
#: few thousand updates warms up over 5 % (at least 100). EMA off: f5_tts/train/README.md, "use_ema
#: = True might be harmful for early-stage finetuned checkpoints".
CONFIG_DEFAULTS = {
    "learning_rate": 1e-5,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "lr_schedule": "warmup_linear",
    "warmup_fraction": 0.05,
    "warmup_min_updates": 100,
    "batch_frames": 3200,
    "ema_decay": 0.0,
    "min_audio_seconds": 0.3,
    "max_audio_seconds": 30.0,
    "freeze": [],
}


class F5Family(ModelFamily):
    """F5-TTS v1 behind the model-family seam (:class:`engine.models.family.ModelFamily`)."""

    name = "f5"
    title = "F5-TTS v1"
    license_name = LICENSE_NAME
    license_summary = LICENSE_SUMMARY
    output_sample_rate = 24000
    loss_terms = ("loss_flow",)
    freeze_group_names = FREEZE_GROUP_NAMES
    config_defaults = CONFIG_DEFAULTS

    def detect(self, directory: Path) -> bool:
        """vocab.txt and an F5 weights file (model.safetensors, model_*.safetensors or model_*.pt)."""
        return detect(Path(directory))

    def missing_files(self, directory: Path) -> list[str]:
        """Weights, vocab.txt and the vocoder files absent from ``directory`` (empty: ready)."""
        return missing_files(Path(directory))

    def write_random_model(self, directory: Path, size: str = "tiny", seed: int = 0) -> Path:
        """:func:`engine.models.f5.files.write_random_model`; ValueError for an unknown size."""
        return write_random_model(directory, size, seed)

    def download_base_model(self, directory: Path, accept_license: bool = False, progress=None, log=print) -> Path:
        """:func:`engine.models.f5.files.download_base_model` (PermissionError without acceptance)."""
        return download_base_model(directory, accept_license, progress, log)

    def trainee(self, cfg, base: Path, device, log=print) -> Trainee:
        """:func:`engine.models.f5.train.build_trainee`."""
        from engine.models.f5.train import build_trainee

        return build_trainee(cfg, Path(base), device, log)

    def make_synthesizer(self, model_dir: Path, device: str | None = None):
        from engine.models.f5.synthesizer import F5Synthesizer

        return F5Synthesizer(model_dir, device=device)

    def export_run(self, voice: str, run: str, weights, out, report, log, **options) -> Path:
        """engine.models.f5.export.export_run (the checkpoint's EMA weights when it has them)."""
        from engine.models.f5 import export

        return export.export_run(voice, run, weights, out, report, log)

    def is_export(self, members: set[str]) -> bool:
        return "vocab.txt" in members and "model.pth" not in members

    def import_export(self, zip_path: Path, target: Path, log) -> Path:
        from engine.models.f5 import export

        return export.import_model(zip_path, target)


FAMILY = F5Family()

__all__ = [
    "CONFIG_DEFAULTS", "FAMILY", "FREEZE_GROUP_NAMES", "LICENSE_NAME", "LICENSE_SUMMARY", "RANDOM_MODEL_MARKER",
    "RANDOM_MODEL_SIZES", "F5Family", "F5ModelError", "download_base_model", "is_random_model", "missing_files",
    "write_random_model",
]  # fmt: skip
