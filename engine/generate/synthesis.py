"""Speech with a voice: the base XTTS-v2 model, a run's fine-tuned GPT weights, or an imported
model, conditioned on reference clips of the voice.

``Synthesizer`` keeps the loaded model: switching to another run, checkpoint or compatible
imported model reloads only the GPT weights, and conditioning latents are computed once per
(references, weights) and cached in memory and on disk (:mod:`engine.generate.conditioning`).
Outputs go to ``outputs/<voice>/`` as 24 kHz 16-bit WAV with a JSON file of their settings
beside (:func:`list_outputs`, :func:`read_output`); a past output's JSON holds everything needed
to generate it again.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine import languages, models, paths
from engine.files import write_bytes_atomic
from engine.generate import conditioning, streaming
from engine.generate.conditioning import ConditioningError
from engine.generate.weights import (
    BASE_MODEL,
    IMPORTED_PREFIX,
    GenerationError,
    ModelWeights,
    architecture,
    checkpoint_weights,
    imported_model_dir,
    imported_models_dir,
    list_imported_models,
    read_state_dict,
    resolve_model,
    run_base_model,
)
from engine.speech import audio as audio_io

#: Codes per streamed chunk (coqui's ``inference_stream`` default: 20 codes, about 0.93 s).
STREAM_CHUNK_CODES = 20


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
    split_sentences: bool = _setting(
        True,
        "Split text longer than the language's limit (250 characters in English) at sentence ends and speak "
        "each part (coqui's text splitting); off, longer text may come out cut short.",
    )
    nfe_step: int = _setting(32, "F5-TTS: ODE steps of the flow-matching sampler (F5's default 32).")
    cfg_strength: float = _setting(
        2.0, "F5-TTS: classifier-free guidance strength (F5's default 2.0): higher follows the text more closely."
    )
    sway_sampling_coef: float = _setting(-1.0, "F5-TTS: sway sampling of the time steps (F5's default -1.0).")
    use_ema: bool = _setting(
        True,
        "F5-TTS: speak with the checkpoint's EMA weights when it has them (a run with ema_decay); off: the "
        "raw weights.",
    )

    def __post_init__(self) -> None:
        if not 0 < self.temperature <= 5:
            raise GenerationError(f"temperature must be in (0, 5], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 1:
            raise GenerationError(f"top_k must be at least 1, got {self.top_k}")
        if not 0.25 <= self.speed <= 4:
            raise GenerationError(f"speed must be in [0.25, 4], got {self.speed}")
        if self.max_seconds < 0:
            raise GenerationError(f"max_seconds must not be negative, got {self.max_seconds}")
        if not 1 <= self.nfe_step <= 128:
            raise GenerationError(f"nfe_step must be between 1 and 128, got {self.nfe_step}")
        if not 0 <= self.cfg_strength <= 10:
            raise GenerationError(f"cfg_strength must be in [0, 10], got {self.cfg_strength}")

    def inference_kwargs(self) -> dict:
        """Keyword arguments of coqui's ``Xtts.inference`` / ``inference_stream`` (without the seed).
        ``max_seconds`` becomes ``max_new_tokens`` at 22050 / 1024 ≈ 21.5 codes per second."""
        extra = {}
        if self.max_seconds:
            extra["max_new_tokens"] = max(1, int(self.max_seconds * models.SAMPLE_RATE / models.CODE_STRIDE))
        return dict(
            temperature=self.temperature, length_penalty=self.length_penalty,
            repetition_penalty=self.repetition_penalty, top_k=self.top_k, top_p=self.top_p,
            speed=self.speed, enable_text_splitting=self.split_sentences, **extra,
        )  # fmt: skip


GENERATION_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(GenerationSettings)}


class Synthesizer:
    """A loaded XTTS-v2 model that generates speech; keeps what is loaded between calls.

    Args:
        base_model: the base-model folder (default models/xtts-v2/).
        device: "cpu", "cuda" or None for CUDA when available.

    ``loads`` counts full model loads (the decoder and everything); GPT switches do not count.
    Not thread-safe: callers use one synthesizer from one task at a time (the web UI runs
    generation and export in one queue).
    """

    family = "xtts"

    def __init__(self, base_model: str | Path | None = None, device: str | None = None, precision: str = "auto"):
        self.base_model = Path(base_model) if base_model else paths.default_base_model_dir()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if precision not in ("auto", "fp32", "fp16"):
            raise GenerationError(f"precision must be auto, fp32 or fp16, got {precision!r}")
        #: "auto": fp16 autocast of the GPT and the decoder on a GPU, fp32 on the CPU.
        self.precision = ("fp16" if self.device.type == "cuda" else "fp32") if precision == "auto" else precision
        self.model = None
        self.model_dir: Path | None = None
        self.weights: ModelWeights | None = None
        self.loads = 0
        self._weights_identity: str | None = None
        self._base_gpt: dict[str, torch.Tensor] = {}
        self._shares_decoder: dict[Path, bool] = {}
        self._latents: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def load(self, weights: ModelWeights | Path | None = None, log: Callable[[str], None] = print):
        """Make ``weights`` speak; returns the coqui ``Xtts``.

        ``weights`` is a :class:`ModelWeights`, or (older form) a run's ``model.safetensors`` /
        None for the base model's own GPT. The full model is loaded once; afterwards only GPT
        weights are swapped, also for another model folder (an imported model) whose
        architecture, tokenizer, mel statistics and non-GPT weights equal the loaded ones;
        anything else is loaded in full. Raises GenerationError, models.BaseModelError.
        """
        if not isinstance(weights, ModelWeights):
            weights = ModelWeights(self.base_model, Path(weights) if weights else None)
        identity = weights.identity() if (weights.gpt or weights.model_dir / "model.pth").is_file() else None
        if self.model is not None and identity == self._weights_identity:
            self.weights = weights
            return self.model
        folder_gpt = None
        if self.model is not None and weights.model_dir != self.model_dir:
            folder_gpt = self._gpt_if_interchangeable(weights.model_dir)
        if self.model is None or (weights.model_dir != self.model_dir and folder_gpt is None):
            log(f"loading the model from {weights.model_dir}")
            self.model = None
            self._latents.clear()
            self.model = models.load_xtts(weights.model_dir, device=self.device, eval=True)
            self.model_dir, self.loads = weights.model_dir, self.loads + 1
            self._base_gpt = {k: v.detach().clone() for k, v in self.model.gpt.state_dict().items()}
            self._shares_decoder = {weights.model_dir: True}
            self._weights_identity = conditioning.file_identity(weights.model_dir / "model.pth")
            if self.device.type == "cuda":
                self.warm_up()
        if identity != self._weights_identity:
            if weights.gpt is not None:
                state = load_file(str(weights.gpt), device=str(self.device))
            elif weights.model_dir == self.model_dir:
                state = self._base_gpt
            else:
                state = folder_gpt
            self._load_gpt(state, weights.gpt or weights.model_dir / "model.pth")
            self._weights_identity = identity
            log(f"using the GPT weights of {weights.model}" + (f" {weights.checkpoint}" if weights.checkpoint else ""))
        self.weights = weights
        return self.model

    def _load_gpt(self, state: dict[str, torch.Tensor], source: Path) -> None:
        missing, unexpected = self.model.gpt.load_state_dict(state, strict=False)
        # The inference wrapper shares the trained modules under other names; nothing else may be missing.
        bad = [k for k in missing if not k.startswith(("gpt_inference.", "gpt.wte."))]
        if bad or unexpected:
            raise GenerationError(f"{source}: does not match the loaded model's GPT ({(bad + unexpected)[:5]})")

    def _gpt_if_interchangeable(self, model_dir: Path) -> dict[str, torch.Tensor] | None:
        """The GPT weights of ``model_dir/model.pth`` when everything else in it equals the loaded
        model (so only the GPT needs loading), else None. The answer is remembered per folder."""
        known = self._shares_decoder.get(model_dir)
        if known is False:
            return None
        if known:
            state = read_state_dict(model_dir / "model.pth")
            return {k[4:]: v for k, v in state.items() if k.startswith("gpt.")}
        try:
            same = (
                architecture(model_dir) == architecture(self.model_dir)
                and (model_dir / "vocab.json").read_bytes() == (self.model_dir / "vocab.json").read_bytes()
                and torch.equal(models.load_mel_stats(model_dir), self.model.mel_stats.cpu())
            )
            state = read_state_dict(model_dir / "model.pth") if same else {}
        except (OSError, ValueError, RuntimeError) as exc:
            raise models.BaseModelError(f"{model_dir}: cannot be read as an XTTS-v2 model: {exc}") from None
        if same:
            loaded = self.model.state_dict()
            for key, value in state.items():
                if key.startswith("gpt.") or key == "mel_stats":
                    continue
                mine = loaded.get(key)
                if mine is None or mine.shape != value.shape or not torch.equal(mine.cpu(), value):
                    same = False
                    break
        self._shares_decoder[model_dir] = same
        return {k[4:]: v for k, v in state.items() if k.startswith("gpt.")} if same else None

    def _autocast(self):
        """fp16 autocast on a GPU when :attr:`precision` is fp16 (layer norms and softmax stay
        fp32, as autocast decides); nothing on the CPU."""
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.precision == "fp16")

    def warm_up(self) -> float:
        """Speak a short word once with neutral conditioning, so that the first real request
        does not pay for CUDA's lazy start (kernel loading, cuBLAS handles, the allocator's
        first blocks). Done by :meth:`load` on a GPU; returns the seconds it took."""
        started = time.perf_counter()
        latent = torch.zeros(1, 32, self.model.args.gpt_n_model_channels, device=self.device)
        speaker = torch.zeros(1, 512, 1, device=self.device)
        settings = GenerationSettings(seed=0, max_seconds=0.5, split_sentences=False)
        with torch.inference_mode(), self._autocast():
            self.model.inference("Hello.", "en", latent, speaker, **settings.inference_kwargs())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started

    def unload(self) -> None:
        """Free the model (before training needs the GPU)."""
        self.model = None
        self.model_dir = None
        self.weights = None
        self._weights_identity = None
        self._base_gpt = {}
        self._latents.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def conditioning(self, references: list[Path], cache_dir: Path | None = None, log: Callable[[str], None] = print):
        """GPT conditioning latents (1, 32, width) and speaker embedding (1, 512, 1) of the
        reference files under the loaded GPT weights (:func:`engine.generate.conditioning.compute_latents`).

        Cached in memory, and in ``cache_dir`` (``outputs/<voice>/.latents/``) when given, by
        :func:`engine.generate.conditioning.latents_key`. Raises ConditioningError when no file is usable.
        """
        if self.model is None:
            raise GenerationError("load a model before computing conditioning latents")
        key = conditioning.latents_key(references, self._weights_identity)
        if key in self._latents:
            return self._latents[key]
        cache_file = cache_dir / f"{key}.pt" if cache_dir else None
        result = conditioning.load_cached(cache_file, self.device) if cache_file else None
        if result is None:
            log(f"computing conditioning latents from {len(references)} reference clip(s)")
            result = conditioning.compute_latents(self.model, references, log=log)
            if cache_file:
                info = {"weights": self._weights_identity, "references": [str(p) for p in references]}
                conditioning.save_cached(cache_file, *result, info)
        self._latents[key] = result
        return result

    def synthesize(self, text: str, latents: tuple[torch.Tensor, torch.Tensor], settings: GenerationSettings,
                   language: str = "en") -> torch.Tensor:  # fmt: skip
        """Speech for ``text`` with the loaded weights: a 1-D float32 tensor at 24 kHz.

        ``latents`` is :meth:`conditioning`'s result; the seed is ``settings.seed``.
        Raises GenerationError for empty text."""
        text = _check_text(text, language)
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        with torch.inference_mode(), self._autocast():
            out = self.model.inference(text, language, *latents, **settings.inference_kwargs())
        wav = out["wav"]
        return (wav if isinstance(wav, torch.Tensor) else torch.as_tensor(wav)).detach().float().cpu().flatten()

    def stream(self, text: str, latents: tuple[torch.Tensor, torch.Tensor], settings: GenerationSettings,
               language: str = "en", chunk_codes: int = STREAM_CHUNK_CODES,
               first_chunk_codes: int = streaming.FIRST_CHUNK_CODES) -> Iterator[torch.Tensor]:  # fmt: skip
        """Speech for ``text`` in chunks as they are decoded (:func:`engine.generate.streaming.stream_xtts`):
        1-D float32 tensors at 24 kHz, the first after ``first_chunk_codes`` codes (about 0.37 s
        of speech), the others about ``chunk_codes`` / 21.5 s each, cross-faded so that their
        concatenation is the whole utterance. Raises GenerationError for empty or too long text."""
        text = _check_text(text, language)
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        chunks = streaming.stream_xtts(
            self.model, text, language, *latents, first_chunk_codes, chunk_codes, **settings.inference_kwargs()
        )
        try:
            while True:
                with torch.inference_mode(), self._autocast():
                    chunk = next(chunks, None)
                if chunk is None:
                    return
                yield chunk.detach().float().cpu().flatten()
        except streaming.StreamTextError as error:
            raise GenerationError(str(error)) from None


def make_synthesizer(model_dir: str | Path | None = None, device=None):
    """The synthesizer of ``model_dir``'s family: :class:`Synthesizer` for XTTS-v2 (also for a
    folder still to be downloaded), ``engine.models.f5.synthesizer.F5Synthesizer`` for F5-TTS."""
    model_dir = Path(model_dir) if model_dir else paths.default_base_model_dir()
    device = str(device) if device is not None else None
    return models.get_family(models.family_of(model_dir)).make_synthesizer(model_dir, device=device)


def _check_text(text: str, language: str | None = None) -> str:
    text = (text or "").strip()
    if not text:
        raise GenerationError("the text is empty")
    if language == "hi" and re.search(r"[0-9]", text):
        # coqui-tts spells digits out with num2words, which has no Hindi: NotImplementedError
        # deep inside the model otherwise (idiap/coqui-ai-TTS#370).
        raise GenerationError(
            "XTTS-v2 cannot read digits in Hindi text (no Hindi number expansion): write the numbers in words"
        )
    return text


# --------------------------------------------------------------------------------------------
# Generating into outputs/<voice>/


@dataclass
class _Job:
    voice: str
    text: str
    weights: ModelWeights
    references: list[conditioning.Reference]
    settings: GenerationSettings
    language: str
    synthesizer: Synthesizer

    def conditioning(self, log):
        cache = paths.output_dir(self.voice) / conditioning.LATENTS_DIR
        return self.synthesizer.conditioning([r.path for r in self.references], cache_dir=cache, log=log)

    def save(self, wav: torch.Tensor, out: Path | None, seconds: float, extra: dict, log) -> Path:
        out = Path(out) if out is not None else unique_output_path(self.voice, self.settings.seed)
        audio_io.save_wav(out, wav, models.OUTPUT_SAMPLE_RATE)
        duration = wav.numel() / models.OUTPUT_SAMPLE_RATE
        meta = {
            "text": self.text, "voice": self.voice, "run": self.weights.model, "checkpoint": self.weights.checkpoint,
            "weights": str(self.weights.gpt) if self.weights.gpt else None, "model_dir": str(self.weights.model_dir),
            "references": [r.id for r in self.references], "language": self.language,
            "settings": asdict(self.settings), "sample_rate": models.OUTPUT_SAMPLE_RATE,
            "seconds": round(duration, 3), "real_time_factor": round(seconds / max(duration, 1e-9), 3),
            "created": time.time(), **extra,
        }  # fmt: skip
        write_bytes_atomic(out.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())
        first = f", first audio after {extra['first_audio_seconds']:.2f} s" if extra.get("first_audio_seconds") else ""
        log(
            f"wrote {out} ({duration:.2f} s of audio in {seconds:.1f} s, RTF {seconds / max(duration, 1e-9):.2f}{first})"
        )
        return out


def _prepare(voice, text, run, checkpoint, base_model, settings, language, references, synthesizer, log) -> _Job:
    text = _check_text(text, language)
    if language not in languages.CODES:
        raise GenerationError(f"language: XTTS-v2 speaks {', '.join(languages.CODES)}; got {language!r}")
    settings = dataclasses.replace(settings) if settings else GenerationSettings()
    if settings.seed is None:
        settings.seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    if base_model is None and synthesizer is not None:
        base_model = synthesizer.base_model
    weights = resolve_model(voice, run, checkpoint, base_model)
    refs = conditioning.resolve_references(voice, references)
    family = models.family_of(weights.model_dir)
    if synthesizer is None or getattr(synthesizer, "family", "xtts") != family:
        synthesizer = make_synthesizer(weights.model_dir, device=getattr(synthesizer, "device", None))
    synthesizer.load(weights, log=log)
    return _Job(voice, text, weights, refs, settings, language, synthesizer)


def generate_candidates(
    voice: str,
    text: str,
    run: str | None = None,
    checkpoint: str = "latest",
    base_model: str | Path | None = None,
    settings: GenerationSettings | None = None,
    language: str = "en",
    candidates: int = 1,
    references: list[str] | None = None,
    synthesizer: Synthesizer | None = None,
    progress: Callable[[float, str], None] | None = None,
    log: Callable[[str], None] = print,
    numbering: tuple[int, int] | None = None,
) -> list[Path]:
    """Speak ``text`` in ``voice``'s voice ``candidates`` times, with seeds seed, seed+1, …;
    writes each as ``outputs/<voice>/<time>-<seed>.wav`` (24 kHz) with its settings JSON beside
    (its own seed, ``candidate`` 1..n and ``candidates`` n); returns the paths in seed order.

    Args:
        voice: the voice; its references are chosen by ``references``.
        run: :data:`BASE_MODEL`/None, a run of the voice, or ``imported:<name>`` (:func:`resolve_model`).
        checkpoint: "latest" or "step-NNNNNNN" of that run.
        base_model: base-model folder (default models/xtts-v2/).
        settings: sampling settings (a seed is drawn and recorded when it is None).
        candidates: how many outputs, 1 to 16.
        references: reference ids (:mod:`engine.generate.conditioning`); None or empty: all recordings.
        synthesizer: a :class:`Synthesizer` to reuse (the UI keeps one).
        progress: optional ``progress(fraction, description)``.
        numbering: (number of the first, total) recorded as ``candidate`` / ``candidates``
            when these outputs continue a set (the first one streamed); default (1, candidates).

    Raises GenerationError (empty text, a language outside :data:`engine.languages.CODES`,
    bad run/checkpoint/model, candidates out of range),
    ConditioningError (no usable reference), models.BaseModelError (base model missing).
    """
    if not 1 <= int(candidates) <= 16:
        raise GenerationError(f"candidates must be between 1 and 16, got {candidates}")
    report = progress or (lambda fraction, desc: None)
    report(0.02, "loading the model")
    job = _prepare(voice, text, run, checkpoint, base_model, settings, language, references, synthesizer, log)
    report(0.15, "conditioning on the voice")
    latents = job.conditioning(log)
    outputs, first_seed = [], job.settings.seed
    first, total = numbering or (1, int(candidates))
    for index in range(int(candidates)):
        job.settings = dataclasses.replace(job.settings, seed=first_seed + index)
        report(0.2 + 0.75 * index / candidates, f"speaking candidate {index + 1} of {candidates}")
        started = time.perf_counter()
        wav = job.synthesizer.synthesize(job.text, latents, job.settings, job.language)
        extra = {"candidate": first + index, "candidates": total}
        outputs.append(job.save(wav, None, time.perf_counter() - started, extra, log))
    report(1.0, "done")
    return outputs


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
    references: list[str] | None = None,
) -> Path:
    """Speak ``text`` once and write a 24 kHz WAV (``out``, default a new file in
    ``outputs/<voice>/``) with its settings JSON beside; returns its path. Arguments and errors
    as :func:`generate_candidates`."""
    report = progress or (lambda fraction, desc: None)
    report(0.05, "loading the model")
    job = _prepare(voice, text, run, checkpoint, base_model, settings, language, references, synthesizer, log)
    report(0.3, "conditioning on the voice")
    latents = job.conditioning(log)
    report(0.5, "speaking")
    started = time.perf_counter()
    wav = job.synthesizer.synthesize(job.text, latents, job.settings, job.language)
    path = job.save(wav, out, time.perf_counter() - started, {}, log)
    report(1.0, "done")
    return path


def stream_speech(
    voice: str,
    text: str,
    run: str | None = None,
    checkpoint: str = "latest",
    base_model: str | Path | None = None,
    settings: GenerationSettings | None = None,
    language: str = "en",
    references: list[str] | None = None,
    synthesizer: Synthesizer | None = None,
    log: Callable[[str], None] = print,
    candidates: int = 1,
) -> Iterator[torch.Tensor]:
    """A generator of speech chunks (1-D float32 at 24 kHz, :meth:`Synthesizer.stream`) as they
    are decoded; when it is exhausted the whole utterance has been written like
    :func:`generate_speech` (with ``"streamed": true``) and the generator *returns* its path
    (``path = yield from stream_speech(...)``, or ``StopIteration.value``). ``candidates`` > 1
    records it as the first of that many (the others made by :func:`generate_candidates` with
    ``numbering=(2, candidates)``). Errors as :func:`generate_candidates`, raised on the first
    ``next()``."""
    job = _prepare(voice, text, run, checkpoint, base_model, settings, language, references, synthesizer, log)
    latents = job.conditioning(log)
    started, chunks, first = time.perf_counter(), [], None
    for chunk in job.synthesizer.stream(job.text, latents, job.settings, job.language):
        first = first if first is not None else time.perf_counter() - started
        chunks.append(chunk)
        yield chunk
    wav = torch.cat(chunks) if chunks else torch.zeros(0)
    extra = {"streamed": True, "first_audio_seconds": round(first, 3) if first is not None else None}
    extra |= {"candidate": 1, "candidates": candidates} if candidates > 1 else {}
    return job.save(wav, None, time.perf_counter() - started, extra, log)


# --------------------------------------------------------------------------------------------
# History


def unique_output_path(voice: str, seed: int) -> Path:
    """``outputs/<voice>/<YYYYmmdd-HHMMSS>-<seed>[-n].wav`` that does not exist yet."""
    folder = paths.output_dir(voice)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}"
    path, n = folder / f"{stem}.wav", 2
    while path.exists() or path.with_suffix(".json").exists():
        path, n = folder / f"{stem}-{n}.wav", n + 1
    return path


def _read_meta(wav: Path) -> dict:
    meta_path = wav.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    meta["path"] = str(wav)
    meta["name"] = wav.name
    meta.setdefault("created", wav.stat().st_mtime)
    return meta


def list_outputs(voice: str) -> list[dict]:
    """Past outputs of ``voice``, newest first: each its settings JSON plus ``"path"`` and
    ``"name"`` (the file name); an output whose JSON is missing or damaged has only those and
    ``"created"`` (the file's modification time)."""
    folder = paths.output_dir(voice)
    if not folder.is_dir():
        return []
    items = [_read_meta(wav) for wav in folder.glob("*.wav")]
    return sorted(items, key=lambda m: (m["created"], m["name"]), reverse=True)


def read_output(voice: str, name: str) -> dict:
    """The settings JSON of the past output ``outputs/<voice>/<name>`` plus ``path`` and ``name``.
    Raises GenerationError when ``name`` is not a WAV file directly in that folder."""
    base = paths.output_dir(voice).resolve()
    path = (base / str(name)).resolve()
    if path.parent != base or path.suffix != ".wav" or not path.is_file():
        raise GenerationError(f"{name}: no such output of voice {voice!r} in {base}")
    return _read_meta(path)


def settings_of(meta: dict) -> GenerationSettings:
    """The GenerationSettings recorded in a past output's JSON (unknown keys ignored, missing
    ones at their defaults). Raises GenerationError for values out of range."""
    recorded = meta.get("settings") or {}
    names = {f.name for f in dataclasses.fields(GenerationSettings)}
    return GenerationSettings(**{k: v for k, v in recorded.items() if k in names})


def default_language(voice: str | None, model: str | None = None) -> str:
    """The language to speak when none is chosen: the ``language`` of the run's train.yaml when
    ``model`` is a run of ``voice`` (what its GPT was fine-tuned on), else the voice's dataset
    language (:func:`engine.languages.dataset_language`), else ``"en"``.

    Never raises: a missing or unreadable train.yaml or report.json (or a bad name) falls
    through to the next source, since this only picks a default the user can change.
    """
    from engine.config import ConfigError, TrainConfig

    if voice and model and model != BASE_MODEL and not model.startswith(IMPORTED_PREFIX):
        try:
            return TrainConfig.load(paths.run_dir(voice, model) / "train.yaml").language
        except (ConfigError, OSError, paths.InvalidNameError):
            pass
    return languages.dataset_language(voice) or languages.DEFAULT_LANGUAGE


__all__ = [  # the names of engine.generate.weights and engine.generate.conditioning that callers of this module use
    "BASE_MODEL", "GENERATION_HELP", "IMPORTED_PREFIX", "ConditioningError", "GenerationError", "GenerationSettings",
    "ModelWeights", "Synthesizer", "checkpoint_weights", "generate_candidates", "generate_speech",
    "imported_model_dir", "imported_models_dir", "list_imported_models", "list_outputs", "read_output",
    "read_state_dict", "resolve_model", "run_base_model", "settings_of", "stream_speech", "default_language",
]  # fmt: skip
