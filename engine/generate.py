"""Speech with a voice: the base XTTS-v2 model, optionally with a run's fine-tuned GPT weights,
conditioned on the voice's own recordings.

``Synthesizer`` keeps the loaded model: switching to another run or checkpoint reloads only the
GPT weights, and conditioning latents are computed once per (references, weights) and cached.
Outputs go to ``outputs/<voice>/`` as 24 kHz 16-bit WAV with a JSON file of their settings beside.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine import audio as audio_io
from engine import models, paths, runs

#: The base model's own weights, instead of a run.
BASE_MODEL = "base model"


class GenerationError(ValueError):
    """Generation cannot run (no reference audio, empty text, unknown run or checkpoint)."""


def _setting(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class GenerationSettings:
    """Sampling settings of XTTS-v2's GPT (defaults: coqui's ``Xtts.inference``); each field's
    help text is in its metadata (:data:`GENERATION_HELP`), shown by the UI."""

    temperature: float = _setting(
        0.75, "Softmax temperature of the audio-code sampler: lower is steadier, higher more varied."
    )
    top_k: int = _setting(50, "Sample only among the k most likely audio codes.")
    top_p: float = _setting(0.85, "Sample only within the smallest set of codes whose probability reaches p (nucleus).")
    repetition_penalty: float = _setting(
        10.0, "Penalty on repeating audio codes; coqui's 10.0 keeps the model from babbling."
    )
    length_penalty: float = _setting(1.0, "Exponent on length in beam search (no effect when sampling).")
    speed: float = _setting(1.0, "Speaking speed factor applied by the decoder (1.0 = natural).")
    seed: int | None = _setting(
        None, "Random seed; empty draws one, which is saved with the output so it can be repeated."
    )
    max_seconds: float = _setting(
        0.0, "Longest speech per sentence in seconds; 0 uses the model's limit (605 codes, about 28 s)."
    )
    split_sentences: bool = _setting(True, "Split long text into sentences and speak each (coqui's text splitting).")

    def __post_init__(self) -> None:
        if not 0 < self.temperature <= 5:
            raise GenerationError(f"temperature must be in (0, 5], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 1:
            raise GenerationError(f"top_k must be at least 1, got {self.top_k}")
        if not 0.25 <= self.speed <= 4:
            raise GenerationError(f"speed must be in [0.25, 4], got {self.speed}")


GENERATION_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(GenerationSettings)}


def reference_files(voice: str) -> list[Path]:
    """The voice's recordings in ``voices/<voice>/`` (reference clips), sorted by name."""
    folder = paths.voice_dir(voice)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in audio_io.SUPPORTED_EXTENSIONS)


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


class Synthesizer:
    """A loaded XTTS-v2 model that generates speech; keeps what is loaded between calls.

    Args:
        base_model: the base-model folder (default models/xtts-v2/).
        device: "cpu", "cuda" or None for CUDA when available.
    """

    def __init__(self, base_model: str | Path | None = None, device: str | None = None):
        self.base_model = Path(base_model) if base_model else paths.default_base_model_dir()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = None
        self.weights: Path | None = None
        self._latents: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def load(self, weights: Path | None, log: Callable[[str], None] = print):
        """Load the base model once, then the GPT weights of ``weights`` (None: base weights)."""
        if self.model is None:
            log(f"loading the base model from {self.base_model}")
            self.model = models.load_xtts(self.base_model, device=self.device, eval=True)
            self._base_gpt = {k: v.detach().clone() for k, v in self.model.gpt.state_dict().items()}
        if weights != self.weights:
            state = self._base_gpt if weights is None else load_file(str(weights), device=str(self.device))
            missing, unexpected = self.model.gpt.load_state_dict(state, strict=False)
            # The inference wrapper shares the trained modules under other names; nothing else may be missing.
            bad = [k for k in missing if not k.startswith(("gpt_inference.", "gpt.wte."))]
            if bad or unexpected:
                raise GenerationError(f"{weights}: does not match the base model's GPT ({(bad + unexpected)[:5]})")
            self.weights = weights
            log(f"using {'the base model weights' if weights is None else weights}")
        return self.model

    def unload(self) -> None:
        """Free the model (before training needs the GPU)."""
        self.model = None
        self.weights = None
        self._latents.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def conditioning(self, references: list[Path], log: Callable[[str], None] = print):
        """GPT conditioning latents (1, 32, width) and speaker embedding (1, 512, 1) from the
        reference recordings (up to 30 s, in 6 s chunks, as coqui's ``get_conditioning_latents``).
        Cached per reference files and GPT weights. Raises GenerationError when none is usable."""
        key = hashlib.sha256(
            json.dumps(
                [str(self.weights)] + [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in references]
            ).encode()
        ).hexdigest()
        if key in self._latents:
            return self._latents[key]
        clips, embeddings = [], []
        for path in references:
            try:
                clip = audio_io.load_audio(path, models.SAMPLE_RATE)
            except audio_io.AudioError as exc:
                log(f"reference skipped: {exc}")
                continue
            clip = clip[: models.SAMPLE_RATE * 30].unsqueeze(0).to(self.device)
            clips.append(clip)
            embeddings.append(self.model.get_speaker_embedding(clip, models.SAMPLE_RATE))
        if not clips:
            raise GenerationError("no usable reference recording: add recordings of the voice first")
        latents = self.model.get_gpt_cond_latents(
            torch.cat(clips, dim=-1), models.SAMPLE_RATE, length=30, chunk_length=6
        )
        result = (latents, torch.stack(embeddings).mean(dim=0))
        self._latents[key] = result
        return result

    def synthesize(self, text: str, references: list[Path], weights: Path | None, settings: GenerationSettings,
                   language: str = "en", log: Callable[[str], None] = print) -> torch.Tensor:  # fmt: skip
        """Speech for ``text``: a 1-D float32 tensor at 24 kHz. Raises GenerationError."""
        text = text.strip()
        if not text:
            raise GenerationError("the text is empty")
        model = self.load(weights, log=log)
        latents, speaker = self.conditioning(references, log=log)
        extra = {}
        if settings.max_seconds:
            extra["max_new_tokens"] = max(1, int(settings.max_seconds * models.SAMPLE_RATE / models.CODE_STRIDE))
        torch.manual_seed(settings.seed)
        with torch.inference_mode():
            out = model.inference(
                text, language, latents, speaker,
                temperature=settings.temperature, length_penalty=settings.length_penalty,
                repetition_penalty=settings.repetition_penalty, top_k=settings.top_k, top_p=settings.top_p,
                speed=settings.speed, enable_text_splitting=settings.split_sentences, **extra,
            )  # fmt: skip
        wav = out["wav"]
        return (wav if isinstance(wav, torch.Tensor) else torch.as_tensor(wav)).detach().float().cpu().flatten()


def generate_speech(
    voice: str,
    text: str,
    run: str | None = None,
    checkpoint: str = "latest",
    base_model: str | Path | None = None,
    settings: GenerationSettings | None = None,
    language: str = "en",
    out: str | Path | None = None,
    synthesizer: Synthesizer | None = None,
    progress: Callable[[float, str], None] | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Speak ``text`` in ``voice``'s voice and write a 24 kHz WAV; returns its path.

    Args:
        voice: the voice; its recordings in voices/<voice>/ are the reference clips.
        run: a run of the voice whose fine-tuned GPT weights to use; None for the base model.
        checkpoint: "latest" or "step-NNNNNNN" of that run.
        base_model: base-model folder (default models/xtts-v2/).
        settings: sampling settings (seed drawn and recorded when None).
        out: output file; default ``outputs/<voice>/<time>-<seed>.wav``. A JSON file with the
            text, model and settings is written beside it.
        synthesizer: a loaded :class:`Synthesizer` to reuse (the UI keeps one).
        progress: optional ``progress(fraction, description)``.

    Raises GenerationError (no references, empty text, bad run/checkpoint) and
    models.BaseModelError (base model missing).
    """
    settings = dataclasses.replace(settings) if settings else GenerationSettings()
    if settings.seed is None:
        settings.seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    references = reference_files(voice)
    if not references:
        raise GenerationError(f"voice {voice!r} has no recordings in {paths.voice_dir(voice)}")
    weights = checkpoint_weights(voice, run, checkpoint)
    if base_model is None and weights is not None:
        base_model = run_base_model(voice, run)
    synthesizer = synthesizer or Synthesizer(base_model)
    report = progress or (lambda fraction, desc: None)
    report(0.05, "loading the model")
    started = time.perf_counter()
    synthesizer.load(weights, log=log)
    report(0.3, "conditioning on the voice")
    synthesizer.conditioning(references, log=log)
    report(0.5, "speaking")
    wav = synthesizer.synthesize(text, references, weights, settings, language=language, log=log)
    seconds = time.perf_counter() - started
    report(0.95, "saving")
    out = Path(out) if out is not None else unique_output_path(voice, settings.seed)
    audio_io.save_wav(out, wav, models.OUTPUT_SAMPLE_RATE)
    duration = wav.numel() / models.OUTPUT_SAMPLE_RATE
    meta = {
        "text": text, "voice": voice, "run": run or BASE_MODEL, "checkpoint": weights.parent.name if weights else None,
        "weights": str(weights) if weights else None, "language": language, "settings": asdict(settings),
        "sample_rate": models.OUTPUT_SAMPLE_RATE, "seconds": round(duration, 3),
        "real_time_factor": round(seconds / max(duration, 1e-9), 3), "created": time.time(),
    }  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out} ({duration:.2f} s of audio in {seconds:.1f} s)")
    return out


def unique_output_path(voice: str, seed: int) -> Path:
    """``outputs/<voice>/<YYYYmmdd-HHMMSS>-<seed>[-n].wav`` that does not exist yet."""
    folder = paths.output_dir(voice)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}"
    path, n = folder / f"{stem}.wav", 2
    while path.exists() or path.with_suffix(".json").exists():
        path, n = folder / f"{stem}-{n}.wav", n + 1
    return path


def list_outputs(voice: str) -> list[dict]:
    """Past outputs of ``voice``, newest first: each its settings JSON plus ``"path"``."""
    folder = paths.output_dir(voice)
    if not folder.is_dir():
        return []
    items = []
    for wav in folder.glob("*.wav"):
        meta_path = wav.with_suffix(".json")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            meta = {}
        meta["path"] = str(wav)
        meta.setdefault("created", wav.stat().st_mtime)
        items.append(meta)
    return sorted(items, key=lambda m: m["created"], reverse=True)
