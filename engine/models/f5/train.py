"""F5-TTS training data and loss: checked samples with cached mel spectrograms, collate, the
flow-matching loss and the freeze groups, handed to the loop as a :class:`Trainee`.

* Text: f5_tts's own processing, ``convert_char_to_pinyin`` (Chinese to TONE3 pinyin, ";" to ","
  and curly quotes to straight ones) then the vocab.txt map, as F5's prepare scripts and
  inference do. A token missing from vocab.txt (f5_tts would silently read it as " ") makes the
  line a dataset problem naming the csv line and the characters.
* Audio: decoded to 24 kHz mono by :func:`engine.speech.audio.load_audio`; the mel spectrogram is
  f5_tts's ``MelSpec`` (Vocos-style log-mel, :data:`engine.models.f5.files.MEL_SPEC`), so the
  features are F5's own. Cached in ``<dataset>/cache/<key>/<audio sha256>.pt``, the key naming
  the family and the mel parameters (the only thing the cached mels depend on; the text tokens
  are recomputed each run, so a new vocab.txt needs no new cache).
"""

from __future__ import annotations

import hashlib
import io
import json
import random as pyrandom
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.files import write_bytes_atomic
from engine.models.f5 import files
from engine.models.family import Trainee
from engine.speech import audio as audio_io
from engine.training.data import Clip, DatasetCheckError, checked_features, read_metadata

SAMPLE_RATE = files.MEL_SPEC["target_sample_rate"]
HOP_LENGTH = files.MEL_SPEC["hop_length"]
N_MELS = files.MEL_SPEC["n_mel_channels"]
#: Padding id of text batches: f5_tts.model.utils.list_str_to_idx pads with -1 (DiT adds 1, so
#: padding becomes its filler embedding 0).
TEXT_PAD = -1


@dataclass
class Sample:
    """A checked clip with its cached features.

    mel: (frames, 100) float32 log-mel at 24 kHz, hop 256 (``samples // 256 + 1`` frames).
    text: (T,) int64 vocab ids of the transcript's tokens.
    samples: audio length in samples at 24 kHz.
    """

    clip: Clip
    mel: torch.Tensor
    text: torch.Tensor
    samples: int

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE

    @property
    def frames(self) -> int:
        return int(self.mel.shape[0])


def cache_key() -> str:
    """16 hex digits naming the feature recipe: family "f5", :data:`files.MEL_SPEC` and the
    extractor (f5_tts MelSpec), so a different mel layout never reads another's cache."""
    recipe = {"family": "f5", "mel_spec": files.MEL_SPEC, "extractor": "f5_tts.model.modules.MelSpec"}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


class MelCache:
    """F5's mel spectrogram of an audio file, computed once and kept in ``cache_dir/<key>/``.

    ``hits`` / ``misses`` count the files read from the cache and computed."""

    def __init__(self, cache_dir: Path):
        from f5_tts.model.modules import MelSpec

        self.cache_dir = Path(cache_dir) / f"f5-{cache_key()}"
        self.mel_spec = MelSpec(**files.MEL_SPEC)
        self.hits = 0
        self.misses = 0

    def features(self, path: Path) -> dict:
        """``{"mel": (frames, 100) float32, "samples": int}``; raises audio.AudioError / OSError."""
        cached = self.cache_dir / f"{audio_io.file_sha256(path)}.pt"
        if cached.is_file():
            try:
                feats = torch.load(cached, map_location="cpu", weights_only=True)
                self.hits += 1
                return feats
            except Exception:  # a damaged cache file is recomputed
                pass
        self.misses += 1
        wav = audio_io.load_audio(path, SAMPLE_RATE, min_seconds=0.0)
        with torch.no_grad():
            mel = self.mel_spec(wav.unsqueeze(0))[0].T.contiguous().float()
        feats = {"mel": mel, "samples": int(wav.numel())}
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(feats, buffer)
        write_bytes_atomic(cached, buffer.getvalue())
        return feats


def text_tokens(text: str) -> list[str]:
    """F5's tokens of ``text``: ``convert_char_to_pinyin`` (characters, pinyin for Chinese)."""
    from f5_tts.model.utils import convert_char_to_pinyin

    return convert_char_to_pinyin([text])[0]


def prepare_samples(
    clips: list[Clip],
    vocab: dict[str, int],
    mels: MelCache,
    min_seconds: float,
    max_seconds: float,
) -> tuple[list[Sample], list[str]]:
    """Check every clip and load its mel. Returns (usable samples, problems), one problem per
    unusable line naming the csv line, the file and the reason (empty transcript, tokens not in
    vocab.txt, undecodable audio, outside [min_seconds, max_seconds])."""
    samples, problems = [], []
    for clip in clips:
        where = f"{clip.source} ({clip.audio_path.name})"
        if not clip.text:
            problems.append(f"{where}: empty transcript")
            continue
        tokens = text_tokens(clip.text)
        unknown = sorted({t for t in tokens if t not in vocab})
        if unknown:
            problems.append(f"{where}: unknown characters {''.join(unknown)!r} in {clip.text!r}")
            continue
        feats, problem = checked_features(mels.features, clip, "samples", SAMPLE_RATE, min_seconds, max_seconds)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        ids = torch.tensor([vocab[t] for t in tokens], dtype=torch.long)
        samples.append(Sample(clip, feats["mel"], ids, feats["samples"]))
    return samples, problems


def collate(samples: Sequence[Sample], rng: pyrandom.Random | None = None) -> dict[str, torch.Tensor]:
    """One micro-batch, as f5_tts's collate_fn builds it: ``mel`` (B, N, 100) float32, zero past
    each clip's end; ``mel_lengths`` (B,) int64 frames; ``text`` (B, T) int64 padded with
    :data:`TEXT_PAD`. Deterministic (``rng`` is unused: CFM draws its masks and noise itself)."""
    lengths = [s.frames for s in samples]
    mel = torch.zeros(len(samples), max(lengths), N_MELS)
    text = torch.full((len(samples), max(s.text.numel() for s in samples)), TEXT_PAD, dtype=torch.long)
    for i, s in enumerate(samples):
        mel[i, : s.frames] = s.mel
        text[i, : s.text.numel()] = s.text
    return {"mel": mel, "mel_lengths": torch.tensor(lengths, dtype=torch.long), "text": text}


def losses(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The conditional flow-matching loss of ``CFM.forward(inp=mel, text, lens=mel_lengths)``: the
    MSE between DiT's predicted flow and ``x1 - x0`` over a random 70-100 % span of each clip
    (f5_tts/model/cfm.py), returned as ``{"loss", "loss_flow"}``.

    CFM draws its span, noise and time from torch's global RNG (seeded by the loop per
    micro-batch), but its audio/text drop decisions (p 0.3 and 0.2, for classifier-free
    guidance) from Python's ``random.random()``. That module-level RNG is seeded here from one
    torch draw and restored afterwards, so the whole loss is a function of torch's RNG state.
    """
    seed = int(torch.randint(0, 2**62, ()).item())
    state = pyrandom.getstate()
    pyrandom.seed(seed)
    try:
        loss, _cond, _pred = module(batch["mel"], batch["text"], lens=batch["mel_lengths"])
    finally:
        pyrandom.setstate(state)
    return {"loss": loss, "loss_flow": loss.detach()}


def freeze_groups(cfm) -> dict[str, list[torch.nn.Module]]:
    """The named DiT module groups train.yaml's ``freeze`` may list (f5_tts 1.1.22 attributes):
    text_embedding (characters + ConvNeXt text blocks), input_embedding (mel/text projection and
    convolutional position embedding), time_embedding, transformer_blocks (with the rotary
    embedding's buffers), output (final adaLN norm and projection to 100 mel bands)."""
    dit = cfm.transformer
    return {
        "text_embedding": [dit.text_embed],
        "input_embedding": [dit.input_embed],
        "time_embedding": [dit.time_embed],
        "transformer_blocks": [dit.transformer_blocks, dit.rotary_embed],
        "output": [dit.norm_out, dit.proj_out],
    }


def build_trainee(cfg, base: Path, device: torch.device | str, log: Callable[[str], None] = print) -> Trainee:
    """Load the CFM from ``base`` (then ``cfg.init_weights``, a safetensors state_dict of the CFM,
    strictly) on ``device``, and the samples of ``cfg.dataset_dir()``'s train.csv and
    validation.csv with their cached mels.

    Reads cfg.init_weights, cfg.min_audio_seconds, cfg.max_audio_seconds, cfg.dataset_dir().
    Raises files.F5ModelError (base folder), DatasetCheckError (a csv is missing, or no usable
    training clip; the message lists every problem).
    """
    from safetensors.torch import load_file

    module = files.load_cfm(base, device=device)
    if cfg.init_weights:
        module.load_state_dict(files.cfm_state_dict(load_file(cfg.init_weights)), strict=True)
        log(f"started from the weights in {cfg.init_weights}")
    module.train()

    dataset = Path(cfg.dataset_dir())
    vocab = files.read_vocab(base)
    mels = MelCache(dataset / "cache")
    bounds = (cfg.min_audio_seconds, cfg.max_audio_seconds)
    train_set, problems = prepare_samples(read_metadata(dataset / "train.csv"), vocab, mels, *bounds)
    val_set, val_problems = prepare_samples(read_metadata(dataset / "validation.csv"), vocab, mels, *bounds)
    problems += val_problems
    if not train_set:
        raise DatasetCheckError("no usable training clip in train.csv:\n" + "\n".join(problems))
    parameters = sum(p.numel() for p in module.parameters())
    info = (
        f"F5-TTS {parameters / 1e6:.1f} M parameters from {base}; {len(train_set)} training and "
        f"{len(val_set)} validation clips, {len(problems)} left out; mel cache: {mels.hits} hits, "
        f"{mels.misses} computed"
    )
    return Trainee(
        module=module,
        train_set=train_set,
        val_set=val_set,
        problems=problems,
        collate=collate,
        losses=losses,
        freeze_groups=freeze_groups(module),
        info=info,
    )
