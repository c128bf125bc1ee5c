"""Scoring speech: how close a transcript is to its text (CER, WER), how close a voice is to
the voice's dataset (SECS), and whether its pace is plausible; :class:`Scorer` does all three.

Used by the dataset step (a clip's text against an independent re-transcription of its audio)
and by checkpoint evaluation (generated speech transcribed by Whisper against the sentence
it was asked to say), as in the Seed-TTS evaluation protocol (WER with Whisper).

Texts are normalised before they are compared: Whisper's own normalisers
(``whisper.normalizers``), ``EnglishTextNormalizer`` for English (spelling variants, numbers,
contractions) and ``BasicTextNormalizer`` for every other language (lower case, no
punctuation or symbols). The edit distances are jiwer's (Levenshtein alignment).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch


@functools.lru_cache(maxsize=1)
def _english_normaliser():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


@functools.lru_cache(maxsize=1)
def _basic_normaliser():
    from whisper.normalizers import BasicTextNormalizer

    return BasicTextNormalizer()


def normalise(text: str, language: str | None = "en") -> str:
    """``text`` as compared: Whisper's ``EnglishTextNormalizer`` when ``language`` is ``"en"``,
    else its ``BasicTextNormalizer``; runs of white space become one space."""
    normaliser = _english_normaliser() if (language or "").lower().startswith("en") else _basic_normaliser()
    return " ".join(normaliser(str(text or "")).split())


def character_error_rate(reference: str, hypothesis: str, language: str | None = "en") -> float:
    """CER: character edits (substitutions + deletions + insertions) turning the normalised
    ``reference`` into the normalised ``hypothesis``, divided by the reference's characters
    (spaces count). 0 for identical texts; may exceed 1 when the hypothesis is much longer;
    1.0 when the reference is empty and the hypothesis is not, 0.0 when both are empty."""
    import jiwer

    ref, hyp = normalise(reference, language), normalise(hypothesis, language)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.cer(ref, hyp)) if hyp else 1.0


def word_error_rate(reference: str, hypothesis: str, language: str | None = "en") -> float:
    """WER: word edits turning the normalised ``reference`` into the normalised
    ``hypothesis``, divided by the reference's words; the empty cases as
    :func:`character_error_rate`."""
    import jiwer

    ref, hyp = normalise(reference, language), normalise(hypothesis, language)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp)) if hyp else 1.0


# --------------------------------------------------------------------------- the scorer

CPS_LOW = 0.5
"""A clip spoken at less than this share of the voice's characters per second is flagged
("too slow or a babbling tail"): twice as long as the voice would say it."""

CPS_HIGH = 2.0
"""A clip spoken at more than this multiple of the voice's characters per second is flagged
("truncated or rushed"): half as long as the voice would say it."""

CER_ABSOLUTE = 0.1
"""A median CER under this counts as intelligible whatever the baseline's (the checkpoint rule,
:func:`engine.training.evaluation.choose_best`); a candidate within this of the lowest CER counts as
intelligible in :func:`rank_candidates`."""


@dataclass(frozen=True)
class VoiceReference:
    """What speech is compared with, taken from the voice's dataset (``datasets/<voice>/``).

    ``embedding``: the Resemblyzer reference, the L2-normalised mean of the embeddings of
    ``clips`` (shape ``(256,)``), or None when none of them could be embedded. ``clips``: the
    wav paths used, the validation (held-out) clips, or every clip when the dataset has no
    validation clip (``source`` says which: ``"validation"`` or ``"all"``).
    ``chars_per_second``: the median over all clips of the normalised text's characters per
    second of audio, or None without durations.
    """

    embedding: np.ndarray | None
    clips: tuple[str, ...]
    source: str
    chars_per_second: float | None


def mean_embedding(embeddings: np.ndarray) -> np.ndarray:
    """The L2-normalised mean of ``(N, D)`` embeddings, shape ``(D,)``: the reference speaker
    vector of Seed-TTS's SIM (mean of the reference utterances' embeddings). Raises
    ValueError for an empty array or a zero mean."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or not len(embeddings):
        raise ValueError(f"need a non-empty (N, D) array of embeddings, got shape {embeddings.shape}")
    mean = embeddings.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm == 0.0:
        raise ValueError("the mean embedding is zero")
    return (mean / norm).astype(np.float32)


def voice_reference(voice: str, device: str = "cpu", log=print) -> VoiceReference:
    """The :class:`VoiceReference` of ``voice``'s prepared dataset.

    Clips too short or silent for an embedding (:class:`engine.speech.speaker.SpeakerError`) are left
    out with a logged note. Raises FileNotFoundError when the voice has no dataset clips.
    """
    from engine.dataset.records import load_clips, voice_settings
    from engine.speech import audio, speaker

    clips = load_clips(voice)
    if not clips:
        raise FileNotFoundError(f"voice {voice!r} has no dataset clips (datasets/{voice}/train.csv)")
    held_out = [c for c in clips if c["split"] == "validation"]
    chosen, source = (held_out, "validation") if held_out else (clips, "all")
    language = (voice_settings(voice).get("language") or "en").split("-")[0]
    rates, embeddings = [], []
    for clip in clips:
        seconds = clip.get("duration") or audio.audio_duration(clip["path"])
        if seconds:
            rates.append(len(normalise(clip["text"], language)) / seconds)
    for clip in chosen:
        try:
            embeddings.append(speaker.embed(audio.load_audio(clip["path"], speaker.SAMPLE_RATE), device))
        except (speaker.SpeakerError, audio.AudioError) as error:
            log(f"note: {clip['audio_file']} left out of the speaker reference: {error}")
    embedding = mean_embedding(np.stack(embeddings)) if embeddings else None
    paths = tuple(c["path"] for c in chosen)
    return VoiceReference(embedding, paths, source, float(np.median(rates)) if rates else None)


def speech_seconds(audio_16k: np.ndarray) -> float:
    """Seconds from the start of the first to the end of the last speech region the VAD
    (:func:`engine.speech.transcribe.detect_speech`) finds in 16 kHz audio; 0.0 when it finds none.
    Leading and trailing silence do not count; pauses inside do."""
    from engine.speech.transcribe import detect_speech

    regions = detect_speech(audio_16k)
    return round(regions[-1][1] - regions[0][0], 3) if regions else 0.0


def xtts_speaker_embedding(model, audio_16k: np.ndarray | torch.Tensor) -> np.ndarray:
    """The speaker embedding of XTTS-v2's own speaker encoder (``hifigan_decoder.speaker_encoder``,
    a ResNet trained for speaker verification, as in ``Xtts.get_conditioning_latents``),
    L2-normalised, shape ``(512,)`` for the released model. ``model``: a loaded coqui ``Xtts``;
    ``audio_16k``: 1-D float samples at 16 kHz. Biased as a similarity measure for XTTS's own
    output: its decoder is conditioned on this very embedding (Casanova et al., "XTTS: a
    Massively Multilingual Zero-Shot Text-to-Speech Model", 2024), so it rewards the decoder's
    input, not only what a listener hears."""
    encoder = model.hifigan_decoder.speaker_encoder
    device = next(encoder.parameters()).device
    samples = torch.as_tensor(np.asarray(audio_16k, dtype=np.float32)).reshape(1, -1).to(device)
    with torch.inference_mode():
        vector = encoder.forward(samples, l2_norm=True)
    return vector.reshape(-1).float().cpu().numpy()


def whisper_choice(voice: str, backend: str | None = None, whisper_model: str | None = None) -> tuple[str, str]:
    """The Whisper ``(backend, model)`` that scores ``voice``'s speech: those given, else the
    ones its dataset was prepared with (:func:`engine.dataset.records.voice_settings`), else
    faster-whisper with :data:`engine.speech.transcribe.DEFAULT_MODELS`. A model path comes back
    absolute. Raises TranscriptionError for an unknown backend."""
    from engine.dataset.records import voice_settings
    from engine.speech import transcribe

    saved = voice_settings(voice)
    backend = backend or saved.get("backend") or "faster-whisper"
    model = whisper_model or (saved.get("whisper_model") if backend == saved.get("backend") else None)
    return backend, transcribe.resolve_model(backend, model or None)


class Scorer:
    """Scores an utterance the way checkpoints are scored, after the Seed-TTS evaluation
    protocol (Anastassiou et al., "Seed-TTS", 2024: WER of a Whisper transcript, SIM as the
    cosine of speaker-verification embeddings):

    - intelligibility: Whisper (``backend``/``whisper_model``, default: those the voice's
      dataset was prepared with, :func:`engine.dataset.records.voice_settings`) transcribes the audio
      at temperature 0; CER for every language and WER for English
      (:func:`character_error_rate`, :func:`word_error_rate`);
    - speaker similarity (SECS): cosine of the Resemblyzer embedding
      (:mod:`engine.speech.speaker`) to :attr:`reference` (the voice's held-out clips); with an XTTS
      model also ``secs_xtts`` with its own speaker encoder, reported apart
      (:func:`xtts_speaker_embedding` says why it is biased);
    - duration sanity: characters per second of speech against the dataset's median
      (:data:`CPS_LOW`, :data:`CPS_HIGH`).

    Args:
        voice: the voice whose dataset gives the references.
        language: the language of the texts (a code such as ``"en"``).
        backend, whisper_model: Whisper backend and model (name or local path); None: the
            voice's, else :data:`engine.speech.transcribe.DEFAULT_MODELS`.
        device: ``"auto"`` (the GPU when there is one), ``"cpu"`` or ``"cuda"``.

    Raises:
        FileNotFoundError: the voice has no dataset clips.
        engine.speech.transcribe.TranscriptionError: an unknown backend, or an English-only Whisper
            model for another language.
    """

    def __init__(self, voice: str, language: str = "en", backend: str | None = None,
                 whisper_model: str | None = None, device: str = "auto", log=print):  # fmt: skip
        from engine.speech import transcribe

        self.voice, self.language = voice, language
        self.backend, self.whisper_model = whisper_choice(voice, backend, whisper_model)
        self.device = device
        transcribe.check_language(self.backend, self.whisper_model, self._whisper_language(), device)
        speaker_device = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
        self.speaker_device = speaker_device
        self.reference = voice_reference(voice, speaker_device, log)
        self._xtts_reference: tuple[int, np.ndarray | None] | None = None

    def _whisper_language(self) -> str:
        return "zh" if self.language == "zh-cn" else self.language

    def describe(self) -> dict:
        """What the scores depend on besides the audio (recorded in scores.json)."""
        return {
            "backend": self.backend, "whisper_model": self.whisper_model, "language": self.language,
            "reference": self.reference.source, "reference_clips": len(self.reference.clips),
            "dataset_chars_per_second": _round(self.reference.chars_per_second),
        }  # fmt: skip

    def transcribe(self, audio_16k: np.ndarray) -> str:
        """Whisper's text for 1-D float32 16 kHz audio, decoded as one window when it is at
        most 30 s long (else the VAD's windows), deterministically."""
        from engine.speech import transcribe

        seconds = audio_16k.size / transcribe.SAMPLE_RATE
        chunks = [(0.0, seconds)] if seconds <= transcribe.CHUNK_SECONDS else None
        segments = transcribe.transcribe(audio_16k, self.backend, self.whisper_model, self._whisper_language(),
                                         self.device, chunks=chunks, word_timestamps=False)  # fmt: skip
        return " ".join(" ".join(s.text.strip() for s in segments).split())

    def xtts_reference(self, model) -> np.ndarray | None:
        """Mean XTTS speaker-encoder embedding of the reference clips, for ``model`` (cached
        per model object)."""
        from engine.speech import audio

        if self._xtts_reference is None or self._xtts_reference[0] != id(model):
            rows = [xtts_speaker_embedding(model, audio.load_audio(p, 16_000)) for p in self.reference.clips]
            self._xtts_reference = (id(model), mean_embedding(np.stack(rows)) if rows else None)
        return self._xtts_reference[1]

    def score(self, audio_16k: np.ndarray | torch.Tensor, text: str | None = None, xtts_model=None) -> dict:
        """Score one utterance.

        Args:
            audio_16k: 1-D float samples in [-1, 1] at 16 kHz.
            text: what it should say; without it there is no transcript, WER, CER or rate.
            xtts_model: a loaded coqui ``Xtts`` for ``secs_xtts``; None leaves it out.

        Returns:
            A JSON-ready dict: ``seconds`` (audio length), ``speech_seconds``
            (:func:`speech_seconds`), ``secs`` (None when the audio cannot be embedded, with
            ``secs_error`` saying why), ``secs_xtts`` (with ``xtts_model``), and with ``text``:
            ``transcript``, ``cer``, ``wer`` (English only, else None),
            ``chars_per_second``, ``cps_ratio`` (to the dataset's median) and ``flags``
            (plain-language problems: "truncated or rushed", "too slow or a babbling tail",
            "no speech heard").
        """
        from engine.speech import speaker

        samples = np.asarray(audio_16k.detach().cpu() if isinstance(audio_16k, torch.Tensor) else audio_16k,
                             dtype=np.float32).reshape(-1)  # fmt: skip
        row: dict = {"seconds": round(samples.size / 16_000, 3), "speech_seconds": speech_seconds(samples)}
        try:
            if self.reference.embedding is None:
                raise speaker.SpeakerError("none of the voice's reference clips could be embedded")
            row["secs"] = round(
                speaker.cosine(speaker.embed(samples, self.speaker_device), self.reference.embedding), 4
            )
        except speaker.SpeakerError as error:
            row["secs"], row["secs_error"] = None, str(error)
        if xtts_model is not None:
            reference = self.xtts_reference(xtts_model)
            vector = xtts_speaker_embedding(xtts_model, samples) if samples.size else None
            row["secs_xtts"] = (
                round(speaker.cosine(vector, reference), 4) if reference is not None and vector is not None else None
            )
        if text is None:
            return row
        # Whisper hallucinates text on silence ("Thank you."); when the VAD hears no speech
        # there is nothing to transcribe.
        transcript = self.transcribe(samples) if row["speech_seconds"] > 0 else ""
        row["transcript"] = transcript
        row["cer"] = round(character_error_rate(text, transcript, self.language), 4)
        english = self.language.startswith("en")
        row["wer"] = round(word_error_rate(text, transcript, self.language), 4) if english else None
        characters = len(normalise(text, self.language))
        rate = characters / row["speech_seconds"] if row["speech_seconds"] > 0 else None
        row["chars_per_second"] = _round(rate)
        reference_rate = self.reference.chars_per_second
        row["cps_ratio"] = _round(rate / reference_rate) if rate and reference_rate else None
        flags = []
        if row["speech_seconds"] == 0:
            flags.append("no speech heard")
        elif row["cps_ratio"] is not None and row["cps_ratio"] > CPS_HIGH:
            flags.append("truncated or rushed")
        elif row["cps_ratio"] is not None and row["cps_ratio"] < CPS_LOW:
            flags.append("too slow or a babbling tail")
        row["flags"] = flags
        return row


def rank_candidates(scorer: Scorer, wavs: list, text: str) -> list[dict]:
    """Order generation candidates by the checkpoint rule: those whose CER is within
    :data:`CER_ABSOLUTE` of the lowest come first, by SECS (highest first); the rest follow by
    CER. Returns one dict per WAV, best first: ``path``, ``rank`` (1 = best) and the
    :meth:`Scorer.score` fields; ``wavs``: paths of the candidates."""
    from engine.speech import audio

    rows = []
    for wav in wavs:
        # Any length and level: a candidate that came out cut short or silent is ranked, not refused.
        samples = audio.load_audio(wav, 16_000, min_seconds=0.0, silence_dbfs=-math.inf).numpy()
        row = scorer.score(samples, text)
        rows.append({"path": str(wav), **row})
    lowest = min(r["cer"] for r in rows) if rows else 0.0

    def key(row):
        close = row["cer"] <= lowest + CER_ABSOLUTE
        return (0, -(row["secs"] if row["secs"] is not None else -1.0), row["cer"]) if close else (1, row["cer"], 0)

    ordered = sorted(rows, key=key)
    for rank, row in enumerate(ordered, start=1):
        row["rank"] = rank
    return ordered


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)
