"""Training data: the dataset check, cached DVAE codes and conditioning mels, and the batch plan.

* :func:`read_metadata` reads ``train.csv`` / ``validation.csv`` (coqui's "coqui" format:
  ``audio_file|text|speaker_name``).
* :func:`prepare_samples` checks every line before the first step and names each unusable one
  (undecodable audio, too short, too long, unknown characters, too many text tokens) instead of
  retrying at random like coqui's XTTS dataset. For the usable ones it computes, once per
  dataset, the DVAE audio codes and the conditioning-encoder mel spectrogram, cached in
  ``datasets/<voice>/cache/<model key>/<audio sha256>.pt`` (keyed by the audio's hash and by
  the DVAE and mel-stats files), so no step recomputes them.
* :func:`epoch_batches` is the deterministic batch plan: a seeded shuffle, pools sorted by
  duration and cut into batches (little padding), then the batches shuffled — not one global
  sort by length, which gave mrq's VALL-E training periodic loss spikes. The plan is a pure
  function of (seed, epoch), so resume only needs the position inside the epoch.
* :func:`collate` builds the GPT's inputs for one micro-batch.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import models
from engine.errors import TimbreError
from engine.files import write_bytes_atomic
from engine.speech import audio as audio_io

# Conditioning slice lengths of coqui's XTTS-v2 recipe (min/max_conditioning_length = 66150 /
# 132300 samples = 3 / 6 s at 22.05 kHz), in mel frames of hop 256.
MIN_COND_FRAMES = 66150 // 256
MAX_COND_FRAMES = 132300 // 256
MEL_HOP = 256


class DatasetCheckError(TimbreError, ValueError):
    """The dataset has no usable line (or no file); the message lists every problem."""


@dataclass(frozen=True)
class Clip:
    """One line of a metadata csv."""

    audio_path: Path
    text: str
    source: str  # "train.csv:12"


@dataclass
class Sample:
    """A checked clip with its cached features.

    text_tokens: (T,) int64 token ids (XTTS tokenizer, with the language token).
    codes: (ceil(wav_length / 1024),) int64 DVAE codes.
    style_mel: (80, frames) float32 conditioning-encoder mel spectrogram, hop 256.
    wav_length: samples at 22.05 kHz.
    """

    clip: Clip
    text_tokens: torch.Tensor
    codes: torch.Tensor
    style_mel: torch.Tensor
    wav_length: int

    @property
    def seconds(self) -> float:
        return self.wav_length / models.SAMPLE_RATE

    @property
    def frames(self) -> int:
        """Length in mel frames (hop 256 at 22.05 kHz), the unit of ``batch_frames``."""
        return math.ceil(self.wav_length / MEL_HOP)


def read_metadata(path: Path) -> list[Clip]:
    """Read a coqui-format csv (header ``audio_file|text|speaker_name``); paths are relative to
    the csv's folder. Raises DatasetCheckError if the file is missing or has no such header."""
    if not path.is_file():
        raise DatasetCheckError(f"{path}: missing — prepare the dataset first")
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="|", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if not header or header[:2] != ["audio_file", "text"]:
            raise DatasetCheckError(f"{path}: expected a header 'audio_file|text|speaker_name'")
        clips = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            audio_file = row[0]
            text = row[1] if len(row) > 1 else ""
            clips.append(Clip(path.parent / audio_file, text.strip(), f"{path.name}:{line_no}"))
    return clips


def model_cache_key(base_model: Path) -> str:
    """Hash of ``dvae.pth`` and ``mel_stats.pth``: cached features are valid only for these files.

    The DVAE file is large (~900 MB for XTTS-v2), so its hash is memoised in a sidecar file keyed
    by size and modification time."""
    parts = []
    for name in ("dvae.pth", "mel_stats.pth"):
        path = base_model / name
        stat = path.stat()
        memo = base_model / f".{name}.sha256"
        stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
        try:
            cached_stamp, cached_hash = memo.read_text().split()
        except (OSError, ValueError):
            cached_stamp, cached_hash = "", ""
        if cached_stamp != stamp:
            cached_hash = audio_io.file_sha256(path)
            try:
                memo.write_text(f"{stamp} {cached_hash}\n")
            except OSError:
                pass  # a read-only model folder only costs a re-hash next time
        parts.append(cached_hash)
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:16]


class FeatureExtractor:
    """DVAE codes and conditioning mels for one clip, with an on-disk cache.

    Args:
        base_model: the base-model folder (dvae.pth, mel_stats.pth).
        cache_dir: folder for ``<sha256>.pt`` files (created on demand).
        device: where the DVAE runs.
    """

    def __init__(self, base_model: Path, cache_dir: Path, device: torch.device | str = "cpu"):
        self.base_model = base_model
        self.cache_dir = cache_dir / model_cache_key(base_model)
        self.device = torch.device(device)
        self._dvae = None
        self._mel_stats = models.load_mel_stats(base_model)
        self.hits = 0
        self.misses = 0

    def _models(self):
        if self._dvae is None:
            self._dvae = models.load_dvae(self.base_model).to(self.device)
            self._dvae_mel = models.dvae_mel_transform(self._mel_stats)
            self._style_mel = models.style_mel_transform(self._mel_stats)
        return self._dvae

    def features(self, path: Path) -> dict:
        """``{"codes", "style_mel", "wav_length"}`` for the audio file; raises audio.AudioError."""
        key = audio_io.file_sha256(path)
        cached = self.cache_dir / f"{key}.pt"
        if cached.is_file():
            try:
                feats = torch.load(cached, map_location="cpu", weights_only=True)
                self.hits += 1
                return feats
            except Exception:  # a damaged cache file is recomputed
                pass
        self.misses += 1
        wav = audio_io.load_audio(path, models.SAMPLE_RATE)
        dvae = self._models()
        with torch.no_grad():
            batch = wav.unsqueeze(0).to(self.device)
            codes = dvae.get_codebook_indices(self._dvae_mel(batch))[0].cpu()
            style_mel = self._style_mel(batch)[0].cpu()
        n_codes = math.ceil(wav.numel() / models.CODE_STRIDE)
        if codes.numel() < n_codes:  # never expected; pad with the last code to be safe
            codes = torch.cat([codes, codes[-1:].expand(n_codes - codes.numel())])
        feats = {
            "codes": codes[:n_codes].long(),
            "style_mel": style_mel.float(),
            "wav_length": int(wav.numel()),
        }
        buffer = io.BytesIO()  # one clip's codes and style mel: a few hundred kB at most
        torch.save(feats, buffer)
        write_bytes_atomic(cached, buffer.getvalue())
        return feats


def unknown_characters(text: str, tokenizer, language: str) -> list[str]:
    """Characters of ``text`` that the tokenizer maps to ``[UNK]`` (after its text cleaning)."""
    unk = tokenizer.tokenizer.token_to_id("[UNK]")
    bad = []
    for ch in sorted(set(text)):
        if ch.isspace():
            continue
        ids = tokenizer.encode(ch, language)
        if unk in ids:
            bad.append(ch)
    return bad


def checked_features(
    extract: Callable[[Path], dict],
    clip: Clip,
    length_key: str,
    sample_rate: int,
    min_seconds: float,
    max_seconds: float,
) -> tuple[dict | None, str | None]:
    """``(features, None)`` of a clip from ``extract(audio_path)`` (a family's cached feature
    extractor), or ``(None, reason)`` for the dataset check: undecodable or unreadable audio, or a
    length (``features[length_key]`` samples at ``sample_rate``) outside [min_seconds, max_seconds]."""
    try:
        feats = extract(clip.audio_path)
    except audio_io.AudioError as exc:
        return None, f"undecodable audio: {exc}"
    except OSError as exc:
        return None, f"cannot read audio: {exc}"
    seconds = feats[length_key] / sample_rate
    if seconds < min_seconds:
        return None, f"too short ({seconds:.2f} s, minimum {min_seconds:g} s)"
    if seconds > max_seconds:
        return None, f"too long ({seconds:.2f} s, maximum {max_seconds:g} s)"
    return feats, None


def prepare_samples(
    clips: list[Clip],
    tokenizer,
    features: FeatureExtractor,
    language: str,
    min_seconds: float,
    max_seconds: float,
    max_text_tokens: int,
    log: Callable[[str], None] = print,
) -> tuple[list[Sample], list[str]]:
    """Check every clip and load its features. Returns (usable samples, problems), one problem
    string per unusable line naming the csv line, the file and the reason."""
    unk = tokenizer.tokenizer.token_to_id("[UNK]")
    samples, problems = [], []
    for clip in clips:
        where = f"{clip.source} ({clip.audio_path.name})"
        if not clip.text:
            problems.append(f"{where}: empty transcript")
            continue
        tokens = tokenizer.encode(clip.text, language)
        if unk in tokens:
            chars = unknown_characters(clip.text, tokenizer, language)
            problems.append(f"{where}: unknown characters {''.join(chars)!r} in {clip.text!r}")
            continue
        if len(tokens) > max_text_tokens:
            problems.append(f"{where}: transcript too long ({len(tokens)} tokens, limit {max_text_tokens})")
            continue
        feats, problem = checked_features(features.features, clip, "wav_length", models.SAMPLE_RATE,
                                          min_seconds, max_seconds)  # fmt: skip
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        samples.append(
            Sample(
                clip,
                torch.tensor(tokens, dtype=torch.long),
                feats["codes"],
                feats["style_mel"],
                feats["wav_length"],
            )
        )
    return samples, problems


# --------------------------------------------------------------------------------------------
# Batch plan


def epoch_batches(
    durations: list[float],
    batch_size: int,
    seed: int,
    epoch: int,
    pool_batches: int = 8,
) -> list[list[int]]:
    """The global batches of one epoch, as lists of sample indices.

    Seeded shuffle of all indices → padded to a multiple of ``batch_size`` by repeating the
    start of the shuffled order (every clip is seen at least once per epoch) → pools of
    ``pool_batches`` batches sorted by duration and cut into batches → batches shuffled.
    Deterministic in (seed, epoch). ``len(result) == ceil(len(durations) / batch_size)``.
    """
    n = len(durations)
    if n == 0:
        return []
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(n))
    rng.shuffle(order)
    total = math.ceil(n / batch_size) * batch_size
    while len(order) < total:
        order += order[: total - len(order)]
    batches = []
    pool = batch_size * pool_batches
    for start in range(0, total, pool):
        chunk = sorted(order[start : start + pool], key=lambda i: (durations[i], i))
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def micro_batch(
    batch: list[int],
    accumulation_index: int,
    rank: int,
    world_size: int,
    micro_size: int,
) -> list[int]:
    """The indices one rank uses in one accumulation step: disjoint slices of the global batch."""
    start = (accumulation_index * world_size + rank) * micro_size
    return batch[start : start + micro_size]


def frame_batches(frames: list[int], max_frames: int, parts: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of one epoch when batches count mel frames (F5-TTS's unit).

    Clips sorted by length (ties by index) are packed greedily while the batch's total frames
    stay within ``max_frames`` (F5-TTS's ``DynamicBatchSampler`` counts frames the same way);
    a batch takes at least ``parts`` clips (one per micro-batch and process) even past the
    budget, and a short last batch joins the one before it. The batches are the same every epoch;
    their order is shuffled, deterministic in (seed, epoch). Raises ValueError when there are
    fewer clips than ``parts``.
    """
    if len(frames) < parts:
        raise ValueError(f"{len(frames)} clip(s) cannot fill {parts} micro-batches")
    order = sorted(range(len(frames)), key=lambda i: (frames[i], i))
    batches: list[list[int]] = [[]]
    total = 0
    for i in order:
        if len(batches[-1]) >= parts and total + frames[i] > max_frames:
            batches.append([])
            total = 0
        batches[-1].append(i)
        total += frames[i]
    if len(batches) > 1 and len(batches[-1]) < parts:
        short = batches.pop()
        batches[-1] += short
    random.Random(seed * 1_000_003 + epoch).shuffle(batches)
    return batches


def split_batch(batch: list[int], index: int, parts: int) -> list[int]:
    """Micro-batch ``index`` of ``parts`` near-equal contiguous slices of a global batch
    (index = accumulation step x processes + rank). For a batch of ``parts x m`` clips it is
    :func:`micro_batch`'s slice."""
    size, extra = divmod(len(batch), parts)
    start = index * size + min(index, extra)
    return batch[start : start + size + (index < extra)]


def padding_fraction(samples: list[Sample]) -> float:
    """Share of padded audio-code positions in a micro-batch (0 = no padding)."""
    lengths = [s.codes.numel() for s in samples]
    return 1.0 - sum(lengths) / (max(lengths) * len(lengths))


def collate(samples: list[Sample], rng: random.Random | None) -> dict[str, torch.Tensor]:
    """The GPT's training inputs for one micro-batch.

    Conditioning: a slice of each clip's own conditioning mel, as in coqui's XTTS recipe (3–6 s,
    half the clip when it is shorter). All slices of a micro-batch get the same length (the
    shortest), so no conditioning padding is needed. ``rng=None`` gives the reproducible
    validation slice (middle length from the start, as coqui does for evaluation).

    Returns text_inputs (B, T) int64, text_lengths (B,), audio_codes (B, C) int64,
    wav_lengths (B,) int64 samples, cond_mels (B, 1, 80, L) float32.
    """
    length = (MIN_COND_FRAMES + MAX_COND_FRAMES) // 2 if rng is None else rng.randint(MIN_COND_FRAMES, MAX_COND_FRAMES)
    frames = [s.style_mel.shape[-1] for s in samples]
    length = min(length if f >= length else max(1, f // 2) for f in frames)
    conds = []
    for s, f in zip(samples, frames, strict=True):
        start = 0 if rng is None else rng.randint(0, f - length)
        conds.append(s.style_mel[:, start : start + length])
    text_lengths = torch.tensor([s.text_tokens.numel() for s in samples])
    code_lengths = [s.codes.numel() for s in samples]
    text = torch.zeros(len(samples), int(text_lengths.max()), dtype=torch.long)
    codes = torch.zeros(len(samples), max(code_lengths), dtype=torch.long)
    for i, s in enumerate(samples):
        text[i, : s.text_tokens.numel()] = s.text_tokens
        codes[i, : s.codes.numel()] = s.codes
    return {
        "text_inputs": text,
        "text_lengths": text_lengths,
        "audio_codes": codes,
        "wav_lengths": torch.tensor([s.wav_length for s in samples]),
        "cond_mels": torch.stack(conds).unsqueeze(1),
    }
