"""Speech from an F5-TTS model: text and a transcribed reference recording in, 24 kHz audio out.

F5-TTS clones a voice by in-filling: the reference's mel spectrogram is the start of the output,
the text is the reference transcript followed by the new text, and the CFM fills the frames after
the reference. The steps follow f5_tts/infer/utils_infer.py (preprocess_ref_audio_text,
infer_process, infer_batch_process), re-written here to take our loaded objects, to be
deterministic for a seed and to leave the global RNG and sys.path alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.errors import TimbreError
from engine.models.f5 import files
from engine.speech import audio as audio_io

SAMPLE_RATE = files.MEL_SPEC["target_sample_rate"]
HOP_LENGTH = files.MEL_SPEC["hop_length"]
#: F5's reference handling (utils_infer.preprocess_ref_audio_text): at most 12 s, edges below
#: -42 dBFS trimmed, 50 ms of silence appended.
REFERENCE_MAX_SECONDS = 12.0
REFERENCE_SILENCE_DBFS = -42.0
REFERENCE_TAIL_SECONDS = 0.05
#: utils_infer constants: quiet references are raised to RMS 0.1 (the output is lowered back),
#: chunks are joined with a 0.15 s linear cross-fade, reference + chunk last about 22 s.
TARGET_RMS = 0.1
CROSS_FADE_SECONDS = 0.15
WINDOW_SECONDS = 22.0

_SENTENCE_END = re.compile(r"(?<=[;:,.!?])\s+|(?<=[；：，。！？])")


class F5GenerationError(TimbreError, ValueError):
    """Generation cannot run: no reference, an empty reference transcript, empty text, bad settings."""


def split_text(text: str, max_bytes: int) -> list[str]:
    """``text`` in chunks of whole sentences (clauses), each at most ``max_bytes`` UTF-8 bytes
    unless one sentence alone is longer. Sentences end at ``; : , . ! ?`` before white space or at
    the CJK ``；：，。！？`` (utils_infer.chunk_text's rule); chunks are packed greedily in order."""
    chunks, current = [], ""
    for sentence in (s for s in _SENTENCE_END.split(text.strip()) if s):
        joined = f"{current} {sentence}" if current and current[-1].isascii() else current + sentence
        if current and len(joined.encode("utf-8")) > max_bytes:
            chunks.append(current)
            current = sentence
        else:
            current = joined
    if current:
        chunks.append(current)
    return chunks


def reference_text(transcript: str) -> str:
    """The reference transcript as F5 feeds it: ending in ". " (utils_infer.preprocess_ref_audio_text),
    then one more space when its last character is ASCII (infer_batch_process), so the new text
    starts as a new sentence."""
    text = transcript.strip()
    if not text.endswith("。"):
        text = text + " " if text.endswith(".") else text + ". "
    return text + " " if len(text[-1].encode("utf-8")) == 1 else text


def estimate_frames(reference_frames: int, ref_text: str, gen_text: str, speed: float) -> int:
    """Total mel frames (reference + new speech): the reference's frames per UTF-8 byte of its
    transcript times the new text's bytes, divided by ``speed``; texts under 10 bytes use speed
    0.3, as infer_batch_process does (very short texts otherwise come out clipped)."""
    ref_bytes, gen_bytes = len(ref_text.encode("utf-8")), len(gen_text.encode("utf-8"))
    local_speed = 0.3 if gen_bytes < 10 else speed
    return reference_frames + int(reference_frames / ref_bytes * gen_bytes / local_speed)


def prepare_reference(path: Path, log: Callable[[str], None] = print) -> torch.Tensor:
    """The reference recording as F5 uses it: 24 kHz mono, silent edges trimmed, cut to
    :data:`REFERENCE_MAX_SECONDS` at its quietest 10 ms between 6 s and 12 s (F5 cuts at a
    silence there too), plus 50 ms of silence. Returns a 1-D float32 tensor. Raises AudioError."""
    wav = audio_io.load_audio(path, SAMPLE_RATE)
    window = SAMPLE_RATE // 100
    frames = wav[: wav.numel() // window * window].view(-1, window)
    level = 20 * torch.log10(frames.abs().amax(dim=1).clamp(min=1e-8))
    loud = torch.nonzero(level > REFERENCE_SILENCE_DBFS).flatten()
    if loud.numel():
        wav = wav[int(loud[0]) * window : (int(loud[-1]) + 1) * window]
    if wav.numel() > REFERENCE_MAX_SECONDS * SAMPLE_RATE:
        start, stop = int(6.0 * SAMPLE_RATE) // window, int(REFERENCE_MAX_SECONDS * SAMPLE_RATE) // window
        energy = wav[: stop * window].view(-1, window).square().mean(dim=1)[start:stop]
        cut = (start + int(torch.argmin(energy))) * window
        log(
            f"reference {Path(path).name} is over {REFERENCE_MAX_SECONDS:g} s: using its first {cut / SAMPLE_RATE:.1f} s"
        )
        wav = wav[:cut]
    return torch.cat([wav, torch.zeros(int(REFERENCE_TAIL_SECONDS * SAMPLE_RATE))])


def crossfade(waves: list[np.ndarray], samples: int) -> np.ndarray:
    """``waves`` joined end to end, each seam a linear cross-fade of up to ``samples`` samples."""
    out = waves[0]
    for wave in waves[1:]:
        n = min(samples, len(out), len(wave))
        if n <= 0:
            out = np.concatenate([out, wave])
            continue
        fade = np.linspace(0.0, 1.0, n, dtype=np.float32)
        out = np.concatenate([out[:-n], out[-n:] * (1 - fade) + wave[:n] * fade, wave[n:]])
    return out.astype(np.float32)


def synthesize(
    model_dir: Path,
    weights: dict[str, torch.Tensor] | None,
    references: list[tuple[Path, str]],
    text: str,
    *,
    nfe_step: int = 32,
    cfg_strength: float = 2.0,
    sway_sampling_coef: float = -1.0,
    speed: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
) -> tuple[np.ndarray, int]:
    """Speak ``text`` in the voice of the first reference.

    Args:
        model_dir: an F5-TTS folder (:mod:`engine.models.f5.files`; its vocoder/ decodes).
        weights: a state_dict of the trained CFM (a checkpoint's model.safetensors or its EMA,
            any key format of files.cfm_state_dict) replacing the folder's weights; None keeps them.
        references: ``(audio file, its transcript)``; only the first is used (F5 conditions on
            one recording), prepared by :func:`prepare_reference`.
        text: what to say; split into chunks (:func:`split_text`) so that reference + chunk last
            about 22 s, each synthesised and joined with a 0.15 s cross-fade.
        nfe_step, cfg_strength, sway_sampling_coef, speed: F5's defaults (utils_infer: 32 Euler
            steps with its pruned schedule, guidance 2.0, sway -1.0, speed 1.0).
        seed: noise seed (chunk i uses ``seed + i``); same inputs and seed, same audio. The global
            torch RNG is left as it was.

    Returns:
        ``(audio, 24000)``: 1-D float32 numpy samples in about [-1, 1] and the sample rate.

    Raises:
        F5GenerationError: no reference, empty reference transcript, empty text, ``speed`` or
            ``nfe_step`` not positive. files.F5ModelError: the folder or weights cannot load.
        audio.AudioError: the reference cannot be decoded.
    """
    from f5_tts.model.utils import convert_char_to_pinyin

    if not references:
        raise F5GenerationError("F5-TTS needs a reference recording with its transcript")
    ref_path, transcript = references[0]
    if not transcript or not transcript.strip():
        raise F5GenerationError(f"the reference {Path(ref_path).name} has no transcript; F5-TTS needs it")
    if not text or not text.strip():
        raise F5GenerationError("there is no text to speak")
    if speed <= 0 or nfe_step < 1:
        raise F5GenerationError(f"speed and nfe_step must be positive (got {speed}, {nfe_step})")

    model = files.load_cfm(model_dir, weights, device)
    vocoder = files.load_vocoder(model_dir, device)
    reference = prepare_reference(Path(ref_path), log)
    rms = float(reference.square().mean().sqrt())
    gain = TARGET_RMS / rms if 0 < rms < TARGET_RMS else 1.0
    cond = (reference * gain).unsqueeze(0).to(device)
    ref_text = reference_text(transcript)
    ref_frames = reference.numel() // HOP_LENGTH
    ref_seconds = reference.numel() / SAMPLE_RATE
    max_bytes = int(len(ref_text.encode("utf-8")) / ref_seconds * max(WINDOW_SECONDS - ref_seconds, 1.0) * speed)
    chunks = split_text(text, max(max_bytes, 1))
    unknown = sorted({t for t in convert_char_to_pinyin([text])[0] if t not in model.vocab_char_map})
    if unknown:
        log(f"characters F5-TTS's vocabulary lacks are read as spaces: {''.join(unknown)!r}")
    log(f"F5-TTS: {len(chunks)} chunk(s), {nfe_step} steps, reference {ref_seconds:.1f} s")

    waves = []
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    for index, chunk in enumerate(chunks):
        duration = estimate_frames(ref_frames, ref_text, chunk, speed)
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            mel, _trajectory = model.sample(
                cond=cond,
                text=convert_char_to_pinyin([ref_text + chunk]),
                duration=duration,
                steps=nfe_step,
                cfg_strength=cfg_strength,
                sway_sampling_coef=sway_sampling_coef,
                seed=seed + index,
            )
            wave = vocoder.decode(mel[:, ref_frames:, :].float().permute(0, 2, 1))
        waves.append(wave.squeeze(0).float().cpu().numpy() / gain)
    audio = crossfade(waves, int(CROSS_FADE_SECONDS * SAMPLE_RATE))
    return audio, SAMPLE_RATE
