"""The XTTS-v2 model family (coqui-tts): a GPT over DVAE audio codes, conditioned on reference
mel spectrograms, decoded by a HiFi-GAN. Fine-tuning trains the GPT only (coqui's
``GPTTrainer`` recipe); its files and loading are in :mod:`engine.models.xtts.files`, the
training samples (cached DVAE codes and conditioning mels) in :mod:`engine.training.data`,
generation in :mod:`engine.generate.synthesis` and export in :mod:`engine.generate.export`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from engine.models.family import ModelFamily, Trainee
from engine.models.xtts import files


class XttsFamily(ModelFamily):
    name = "xtts"
    title = "XTTS-v2"
    license_name = files.LICENSE_NAME
    license_summary = files.LICENSE_SUMMARY
    output_sample_rate = files.OUTPUT_SAMPLE_RATE
    loss_terms = ("loss_text_ce", "loss_mel_ce")
    freeze_group_names = (
        "text_embedding", "text_head", "mel_embedding", "mel_head", "conditioning_encoder", "transformer",
    )  # fmt: skip
    #: The TrainConfig defaults are coqui's XTTS-v2 recipe already.
    config_defaults: dict = {}

    def detect(self, directory: Path) -> bool:
        return all((Path(directory) / name).is_file() for name in ("model.pth", "config.json", "vocab.json"))

    def missing_files(self, directory: Path) -> list[str]:
        return list(files.base_model_status(directory).missing)

    def write_random_model(self, directory: Path, size: str = "tiny", seed: int = 0) -> Path:
        return files.write_random_model(directory, size, seed)

    def trainee(self, cfg, base: Path, device: torch.device, log: Callable[[str], None]) -> Trainee:
        """The GPT of ``base`` (with ``cfg.init_weights``) on ``device``, and the samples of the
        run's dataset with cached DVAE codes and conditioning mels. Losses: text and mel-code
        cross-entropy, weighted by ``text_loss_weight`` / ``mel_loss_weight`` (TorToiSe)."""
        from safetensors.torch import load_file

        from engine.training import data, performance

        xtts = files.load_xtts(base, device="cpu", eval=False)
        gpt, tokenizer = xtts.gpt, xtts.tokenizer
        if cfg.init_weights:
            gpt.load_state_dict(load_file(cfg.init_weights), strict=True)
            log(f"started from the weights in {cfg.init_weights}")
        del xtts.hifigan_decoder  # not trained; frees its memory
        gpt.to(device)

        dataset_dir = cfg.dataset_dir()
        features = data.FeatureExtractor(base, dataset_dir / "cache", device=device)

        def samples(csv: Path) -> tuple[list, list[str]]:
            if not csv.is_file():
                return [], []
            return data.prepare_samples(
                data.read_metadata(csv), tokenizer, features, cfg.language,
                cfg.min_audio_seconds, cfg.max_audio_seconds, cfg.max_text_tokens,
            )  # fmt: skip

        train_set, problems = samples(dataset_dir / "train.csv")
        val_set, val_problems = samples(dataset_dir / "validation.csv")
        features._dvae = None  # the DVAE is no longer needed
        text_weight, mel_weight = cfg.text_loss_weight, cfg.mel_loss_weight

        def losses(module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            loss_text, loss_mel, _ = module(
                batch["text_inputs"], batch["text_lengths"], batch["audio_codes"], batch["wav_lengths"],
                cond_mels=batch["cond_mels"],
            )  # fmt: skip
            return {"loss": text_weight * loss_text + mel_weight * loss_mel,
                    "loss_text_ce": loss_text, "loss_mel_ce": loss_mel}  # fmt: skip

        return Trainee(
            module=gpt, train_set=train_set, val_set=val_set, problems=problems + val_problems,
            collate=data.collate, losses=losses, freeze_groups=freeze_groups(gpt),
            enable_gradient_checkpointing=performance.enable_gradient_checkpointing,
            info=f"features cached ({features.hits} hits, {features.misses} computed)",
        )  # fmt: skip

    def make_synthesizer(self, model_dir: Path, device: str | None = None):
        from engine.generate.synthesis import Synthesizer

        return Synthesizer(model_dir, device=device)

    def export_run(self, voice: str, run: str, weights, out, report, log, **options) -> Path:
        """engine.models.xtts.export.export_run (``references``, ``synthesizer`` options)."""
        from engine.models.xtts import export

        return export.export_run(voice, run, weights, out, report, log, **options)

    def is_export(self, members: set[str]) -> bool:
        """Any XTTS-v2 file (an incomplete one is refused by :meth:`import_export`, naming what lacks)."""
        return bool(members & set(files.REQUIRED_FILES))

    def import_export(self, zip_path: Path, target: Path, log: Callable[[str], None]) -> Path:
        from engine.models.xtts import export

        return export.import_export(zip_path, target, log)


def freeze_groups(gpt) -> dict[str, list[torch.nn.Module]]:
    """The named module groups of coqui's XTTS GPT that ``freeze:`` may list."""
    groups = {
        "text_embedding": [gpt.text_embedding, gpt.text_pos_embedding],
        "text_head": [gpt.text_head],
        "mel_embedding": [gpt.mel_embedding, gpt.mel_pos_embedding],
        "mel_head": [gpt.mel_head],
        "conditioning_encoder": [gpt.conditioning_encoder],
        "transformer": [gpt.gpt, gpt.final_norm],
    }
    if getattr(gpt, "conditioning_perceiver", None) is not None:
        groups["conditioning_encoder"].append(gpt.conditioning_perceiver)
    return groups


FAMILY = XttsFamily()
