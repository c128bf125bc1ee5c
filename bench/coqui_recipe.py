"""Child process of ``bench/train_throughput.py``: coqui's stock XTTS-v2 GPT fine-tuning recipe.

``python -m bench.coqui_recipe --model DIR --dataset DIR --output DIR --batch-size B --steps N
--device cpu|cuda --result RESULT_JSON [--threads T]``

Builds ``GPTArgs`` / ``GPTTrainerConfig`` / ``GPTTrainer`` / ``Trainer`` as coqui's
``recipes/ljspeech/xtts_v2/train_gpt_xtts.py`` does (coqui-tts 0.28, coqui-tts-trainer 0.4),
pointed at a base-model folder (``model.pth`` as xtts_checkpoint, ``dvae.pth``, ``mel_stats.pth``
as mel_norm_file, ``vocab.json`` as tokenizer_file; the GPT's sizes from its ``config.json``)
and at our dataset's ``train.csv`` through ``BaseDatasetConfig(formatter="coqui")``. Every step
therefore loads the clips' audio in DataLoader workers and computes the conditioning mels and the
DVAE codes on the device before the GPT's forward pass — the work our loop caches once.

Changes from the recipe, none of which touch a training step:

- gradient accumulation 1 (the recipe uses 84) so that one step is one batch, as in our run;
- no evaluation (``run_eval=False``), no test sentences (they need a speaker reference and
  synthesise at each epoch's end), no checkpoints inside the measured steps;
- ``num_loader_workers`` is the recipe's 8 capped at the CPU count;
- the training sample list is repeated so that one epoch spans the ``N`` steps (coqui's XTTS
  dataset draws each clip uniformly at random, so repetition changes nothing but the epoch's
  length), and the run stops after step ``N`` from a ``on_train_step_end`` callback, which is
  also where each step's end time is recorded (nothing is parsed from coqui's logs);
- ``Trainer(..., parse_command_line_args=False)`` (this script's arguments are not coqui's);
- ``model.train_step`` and ``model.format_batch_on_device`` are wrapped to record each batch's
  clip lengths and the time of the feature work (mels + DVAE codes); they call coqui's own;
- where ``torchaudio.load`` cannot read a clip (torchaudio >= 2.9 reads through torchcodec, which
  needs FFmpeg's shared libraries), the dataset's ``load_audio`` is replaced by one that reads the
  WAV with soundfile and otherwise does what coqui's does (downmix, resample, clip). Without it
  every clip fails to load, and coqui's dataset retries another clip by recursion, swallowing
  the errors, until the DataLoader worker runs out of memory (a 10.5 GB worker killed by the kernel
  after about 3.5 minutes with 8 clips on this project's CPU machine; no error is printed).

Importing coqui's XTTS training dataset calls ``torch.set_num_threads(1)`` for the whole
process; ``--threads`` sets the count back afterwards (0 keeps coqui's setting).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from dataclasses import fields
from pathlib import Path


class _StepsDone(Exception):
    """Raised from the step-end callback once the requested steps have run."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.coqui_recipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="base-model folder (XTTS-v2 file layout)")
    parser.add_argument("--dataset", type=Path, required=True, help="datasets/<voice>/ with train.csv")
    parser.add_argument("--output", type=Path, required=True, help="coqui's output_path")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--language", default="en")
    parser.add_argument("--threads", type=int, default=0, help="torch threads after coqui's imports (0: coqui's)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="coqui Trainer's mixed_precision/precision (autocast), as our loop's precision")  # fmt: skip
    parser.add_argument("--result", type=Path, required=True)
    return parser


def recipe_config(model_dir: Path, dataset_dir: Path, output: Path, batch_size: int, language: str, workers: int,
                  precision: str = "fp32"):  # fmt: skip
    """GPTTrainerConfig as in train_gpt_xtts.py, with the model's own GPT sizes."""
    from TTS.config.shared_configs import BaseDatasetConfig
    from TTS.tts.configs.xtts_config import XttsAudioConfig
    from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTArgs, GPTTrainerConfig

    # The recipe relies on GPTArgs' defaults, which are XTTS-v2's sizes; a tiny model needs its own.
    model_args = json.loads((model_dir / "config.json").read_text())["model_args"]
    known = {f.name for f in fields(GPTArgs)}
    sizes = {k: v for k, v in model_args.items() if k in known and k.startswith(("gpt_", "decoder_", "d_vector"))}
    recipe_args = dict(
        max_conditioning_length=132300,  # 6 secs
        min_conditioning_length=66150,  # 3 secs
        debug_loading_failures=False,
        max_wav_length=255995,  # ~11.6 seconds
        max_text_length=200,
        mel_norm_file=str(model_dir / "mel_stats.pth"),
        dvae_checkpoint=str(model_dir / "dvae.pth"),
        xtts_checkpoint=str(model_dir / "model.pth"),
        tokenizer_file=str(model_dir / "vocab.json"),
        gpt_num_audio_tokens=1026,
        gpt_start_audio_token=1024,
        gpt_stop_audio_token=1025,
        gpt_use_masking_gt_prompt_approach=True,
        gpt_use_perceiver_resampler=True,
    )
    args = GPTArgs(**{**sizes, **recipe_args})
    dataset = BaseDatasetConfig(
        formatter="coqui",
        dataset_name="bench",
        path=str(dataset_dir),
        meta_file_train="train.csv",
        language=language,
    )
    return GPTTrainerConfig(
        output_path=str(output),
        model_args=args,
        run_name="GPT_XTTS_v2.0_bench",
        project_name="XTTS_trainer",
        run_description="coqui's XTTS-v2 GPT recipe, timed by bench/train_throughput.py",
        datasets=[dataset],
        dashboard_logger="tensorboard",
        logger_uri=None,
        audio=XttsAudioConfig(sample_rate=22050, dvae_sample_rate=22050, output_sample_rate=24000),
        batch_size=batch_size,
        batch_group_size=48,
        eval_batch_size=batch_size,
        num_loader_workers=workers,
        eval_split_max_size=256,
        print_step=50,
        plot_step=100,
        log_model_step=1000,
        save_step=10000,
        save_n_checkpoints=1,
        save_checkpoints=True,
        print_eval=False,
        run_eval=False,
        optimizer="AdamW",
        optimizer_wd_only_on_weights=True,
        optimizer_params={"betas": [0.9, 0.96], "eps": 1e-8, "weight_decay": 1e-2},  # None crashes GPTTrainer
        lr=5e-06,
        lr_scheduler="MultiStepLR",
        lr_scheduler_params={"milestones": [50000 * 18, 150000 * 18, 300000 * 18], "gamma": 0.5, "last_epoch": -1},
        test_sentences=[],
        mixed_precision=precision != "fp32",
        precision=precision if precision != "fp32" else "fp16",
    )


def load_audio_soundfile(audiopath, sampling_rate):
    """coqui's ``TTS.tts.models.xtts.load_audio`` with soundfile in place of ``torchaudio.load``:
    (1, samples) float32 in [-1, 1] at ``sampling_rate``."""
    import soundfile
    import torch
    import torchaudio

    samples, rate = soundfile.read(audiopath, dtype="float32", always_2d=True)
    audio = torch.from_numpy(samples.T.copy())
    if audio.size(0) != 1:
        audio = torch.mean(audio, dim=0, keepdim=True)
    if rate != sampling_rate:
        audio = torchaudio.functional.resample(audio, rate, sampling_rate)
    return audio.clip_(-1, 1)


def choose_audio_loader(probe: str) -> str:
    """Keep coqui's audio loading if ``torchaudio.load`` reads ``probe``; else patch the XTTS
    dataset module to use :func:`load_audio_soundfile`. Returns what was used and why."""
    import torchaudio
    from TTS.tts.layers.xtts.trainer import dataset

    try:
        torchaudio.load(probe)
        return "torchaudio.load (coqui's own)"
    except Exception as exc:  # RuntimeError from torchcodec, ImportError, OSError …
        dataset.load_audio = load_audio_soundfile
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(" Likely causes")[0]
        return f"soundfile (torchaudio.load failed: {reason})"


def run(args: argparse.Namespace) -> dict:
    """Train ``args.steps`` steps with coqui's Trainer; returns the measurements."""
    import torch

    threads_before = torch.get_num_threads()
    from trainer import Trainer, TrainerArgs
    from TTS.tts.datasets import load_tts_samples
    from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTTrainer

    threads_coqui = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = min(8, os.cpu_count() or 1)
    config = recipe_config(args.model, args.dataset, args.output, args.batch_size, args.language, workers,
                           args.precision)  # fmt: skip
    started = time.time()
    model = GPTTrainer(config)
    train_samples, _ = load_tts_samples(config, eval_split=False)
    audio_loader = choose_audio_loader(train_samples[0]["audio_file"])
    repeat = math.ceil(args.steps * args.batch_size / len(train_samples)) + 1
    cuda = args.device == "cuda"

    wav_lengths: list[list[int]] = []
    step_ends: list[float] = []
    feature_seconds: list[float] = []
    original_train_step = model.train_step
    original_format = model.format_batch_on_device

    def format_batch_on_device(batch):  # the conditioning mels and DVAE codes, timed
        started = time.perf_counter()
        batch = original_format(batch)
        if cuda:
            torch.cuda.synchronize()
        feature_seconds.append(time.perf_counter() - started)
        return batch

    def train_step(batch, criterion, optimizer_idx=None):
        wav_lengths.append([int(n) for n in batch["wav_lengths"].tolist()])
        return original_train_step(batch, criterion, optimizer_idx)

    def on_step_end(trainer) -> None:
        if cuda:
            torch.cuda.synchronize()
        step_ends.append(time.time())
        if len(step_ends) >= args.steps:
            raise _StepsDone

    model.train_step = train_step
    model.format_batch_on_device = format_batch_on_device
    trainer = Trainer(
        TrainerArgs(restore_path=None, skip_train_epoch=False, start_with_eval=False, grad_accum_steps=1),
        config,
        output_path=str(args.output),
        model=model,
        train_samples=train_samples * repeat,
        eval_samples=None,
        parse_command_line_args=False,
        callbacks={"on_train_step_end": on_step_end},
    )
    try:
        trainer._fit()  # Trainer.fit() minus its handler that deletes the output folder on any exception
    except _StepsDone:
        pass
    result = {
        "started": started,
        "step_ends": step_ends,
        "wav_lengths": wav_lengths,
        "feature_seconds": feature_seconds,
        "clips": len(train_samples),
        "audio_loader": audio_loader,
        "num_loader_workers": workers,
        "torch_threads_before_import": threads_before,
        "torch_threads_coqui": threads_coqui,
        "torch_threads": torch.get_num_threads(),
        "rss_self_max_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    if cuda:
        result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        result["cuda_max_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # coqui's Trainer takes a GPU whenever it sees one
    result = run(args)
    result["exit_code"] = 0 if len(result["step_ends"]) == args.steps else 1
    args.result.write_text(json.dumps(result) + "\n")
    return result["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
