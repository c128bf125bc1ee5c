"""Reference clips of a voice, and the conditioning latents computed from them (cached).

XTTS-v2 conditions its speech on two things computed from reference audio (coqui's
``Xtts.get_conditioning_latents``):

- the **GPT conditioning latents**, shape (1, 32, width): the GPT's conditioning encoder and
  perceiver resampler applied to mel spectrograms of the references. Fine-tuning trains that
  encoder, so the latents depend on the GPT weights as well as on the audio;
- the **speaker embedding**, shape (1, 512, 1): the HiFi-GAN decoder's speaker encoder, which
  fine-tuning leaves untouched.

References are the voice's recordings in ``voices/<voice>/`` and its dataset clips in
``datasets/<voice>/wavs/``; each is named by its path relative to the data home (its *id*,
e.g. ``voices/anna/take1.wav``), which is what the UI shows, what an output's settings record,
and the only thing :func:`resolve_references` accepts.

Latents are cached on disk in ``outputs/<voice>/.latents/<key>.pt`` (and in memory by
:class:`engine.generate.synthesis.Synthesizer`). The key (:func:`latents_key`) is the SHA-256 of the
references' contents, in order, and of the identity of the GPT weights file (path, size,
modification time: checkpoint files are written once and never changed in place).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import models, paths
from engine.errors import TimbreError
from engine.files import write_bytes_atomic
from engine.speech import audio as audio_io

RECORDING = "recording"
CLIP = "dataset clip"
LATENTS_DIR = ".latents"

#: Seconds of each reference file read (coqui's ``get_conditioning_latents(max_ref_length=30)``),
#: and the chunk length of the GPT conditioning over the first 30 s of their concatenation.
#: coqui's own presets are shorter (``get_conditioning_latents``: 6 s in one chunk; XttsConfig,
#: used by ``synthesize``: 12 s in 4 s chunks); 30 s lets several chosen clips all contribute.
MAX_REFERENCE_SECONDS = 30
CHUNK_SECONDS = 6


class ConditioningError(TimbreError, ValueError):
    """No usable reference, or a reference that is not one of the voice's files (named)."""


@dataclass(frozen=True)
class Reference:
    """One reference clip: ``kind`` is :data:`RECORDING` or :data:`CLIP`; ``id`` is its path
    relative to the data home with ``/`` separators; ``path`` the file."""

    kind: str
    id: str
    path: Path

    @property
    def label(self) -> str:
        """What the UI shows: ``take1.wav (recording)``."""
        return f"{self.path.name} ({self.kind})"


def _relative_id(path: Path) -> str:
    return Path(os.path.relpath(path, paths.home())).as_posix()


def list_references(voice: str) -> list[Reference]:
    """The voice's recordings (:data:`engine.speech.audio.SUPPORTED_EXTENSIONS` files in
    ``voices/<voice>/``), then its dataset clips (``datasets/<voice>/wavs/*.wav``), each sorted
    by name. [] when it has neither. Raises InvalidNameError for an unsafe voice name."""
    found = []
    folders = ((RECORDING, paths.voice_dir(voice), audio_io.SUPPORTED_EXTENSIONS),
               (CLIP, paths.dataset_dir(voice) / "wavs", (".wav",)))  # fmt: skip
    for kind, folder, extensions in folders:
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)
            found += [Reference(kind, _relative_id(p), p) for p in files]
    return found


def default_references(voice: str) -> list[Reference]:
    """The references used when none is chosen: all recordings, or the dataset clips when the
    voice has no recordings (its recordings folder may have been emptied after preparing)."""
    available = list_references(voice)
    recordings = [r for r in available if r.kind == RECORDING]
    return recordings or available


def resolve_references(voice: str, ids: Sequence[str] | None) -> list[Reference]:
    """The references named by ``ids`` (see the module docstring), in the order given, without
    duplicates; :func:`default_references` when ``ids`` is empty or None.

    Raises:
        ConditioningError: an id is not one of the voice's references (the message names it;
            this is also what keeps a typed ``../`` path out), or the voice has none at all.
    """
    available = {r.id: r for r in list_references(voice)}
    if not ids:
        chosen = default_references(voice)
        if not chosen:
            raise ConditioningError(
                f"voice {voice!r} has no reference audio: add recordings to {paths.voice_dir(voice)} "
                "or prepare its dataset"
            )
        return chosen
    chosen = []
    for ref_id in dict.fromkeys(ids):
        if ref_id not in available:
            raise ConditioningError(f"{ref_id}: not a recording or dataset clip of voice {voice!r}")
        chosen.append(available[ref_id])
    return chosen


@functools.lru_cache(maxsize=4096)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return audio_io.file_sha256(path)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's contents; remembered per (path, size, modification time)."""
    stat = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def file_identity(path: str | os.PathLike) -> str:
    """``<absolute path>:<size>:<mtime_ns>``: names a weights file without reading its gigabytes."""
    stat = os.stat(path)
    return f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def latents_key(references: Sequence[Path], weights_identity: str) -> str:
    """The cache key of the latents of ``references`` (order matters: they are concatenated)
    under the GPT weights named by ``weights_identity`` (:func:`file_identity`): SHA-256 hex."""
    parts = [weights_identity, *(file_sha256(p) for p in references)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def cache_path(voice: str, key: str) -> Path:
    """``outputs/<voice>/.latents/<key>.pt``."""
    return paths.output_dir(voice) / LATENTS_DIR / f"{key}.pt"


def load_cached(path: Path, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor] | None:
    """(latents, speaker embedding) from a cache file, or None when it is missing or unreadable
    (a damaged cache file is recomputed, never an error)."""
    try:
        data = torch.load(path, map_location=device, weights_only=True)
        return data["gpt_cond_latent"], data["speaker_embedding"]
    except (OSError, RuntimeError, KeyError, TypeError, EOFError):
        return None


def save_cached(path: Path, latents: torch.Tensor, speaker: torch.Tensor, info: dict) -> Path:
    """Write a cache file atomically: ``{"gpt_cond_latent", "speaker_embedding", "info"}`` with
    CPU tensors, the keys coqui's ``speakers_xtts.pth`` uses per speaker (plus ``info``)."""
    buffer = io.BytesIO()
    data = {"gpt_cond_latent": latents.detach().cpu().clone(), "speaker_embedding": speaker.detach().cpu().clone()}
    torch.save({**data, "info": json.dumps(info)}, buffer)
    return write_bytes_atomic(path, buffer.getvalue())


def compute_latents(model, references: Sequence[Path], log: Callable[[str], None] = print):
    """GPT conditioning latents (1, 32, width) and speaker embedding (1, 512, 1) of ``references``
    with a loaded coqui ``Xtts``: the first :data:`MAX_REFERENCE_SECONDS` s of each file, decoded at
    22.05 kHz; the speaker embedding is the mean over the files, the latents are computed on their
    concatenation in :data:`CHUNK_SECONDS` s chunks (as coqui's ``get_conditioning_latents``).
    Unusable files are skipped with a log line. Raises ConditioningError when none is usable."""
    clips, embeddings = [], []
    for path in references:
        try:
            clip = audio_io.load_audio(path, models.SAMPLE_RATE)
        except audio_io.AudioError as exc:
            log(f"reference skipped: {exc}")
            continue
        clip = clip[: models.SAMPLE_RATE * MAX_REFERENCE_SECONDS].unsqueeze(0).to(model.device)
        clips.append(clip)
        embeddings.append(model.get_speaker_embedding(clip, models.SAMPLE_RATE))
    if not clips:
        names = ", ".join(Path(p).name for p in references)
        raise ConditioningError(f"no usable reference audio among {names}")
    latents = model.get_gpt_cond_latents(
        torch.cat(clips, dim=-1), models.SAMPLE_RATE, length=MAX_REFERENCE_SECONDS, chunk_length=CHUNK_SECONDS
    )
    return latents, torch.stack(embeddings).mean(dim=0)
