"""Speaker embeddings: is this clip the voice's speaker, and how close is generated speech to it?

The encoder is Resemblyzer's (``resemblyzer==0.1.4``): a GE2E speaker encoder (Wan et al.,
"Generalized End-to-End Loss for Speaker Verification", 2018), 3 LSTM layers of 256 over 40-band
mel spectrograms of 16 kHz audio, giving 256-d embeddings that are non-negative and
L2-normalised. Its weights (``pretrained.pt``, 17 MB, Apache-2.0) ship inside the wheel, so
nothing is downloaded. Its README says it works best on English; it runs on other languages.
Used by the dataset step (a clip that may be another speaker) and by checkpoint scoring
(speaker similarity, SECS, of generated speech to the voice).

What the encoder is given (:func:`prepare`): the utterance's RMS level set to -30 dBFS, then
Resemblyzer's ``trim_long_silences`` (webrtcvad, mode 3), which shortens pauses. Resemblyzer's
own ``preprocess_wav`` only raises the level (``increase_only=True``). The encoder's input is a
power (not log) mel spectrogram, so the level moves the embedding. Measured on espeak-ng clips
(8 sentences of ``en-us``, 2.7–3.7 s): with increase-only, the same clips scaled by 0.3 fell
from 0.94 to 0.89 mean similarity to their voice; with the level always set to -30 dBFS they
stay at 0.93 at any gain. Another voice (``en-us+f3``) also scored lower that way, at most 0.65
against 0.72. Audio is expected at :data:`SAMPLE_RATE`: decode it with
``engine.speech.audio.load_audio(path, speaker.SAMPLE_RATE)``.

Importing Resemblyzer imports ``webrtcvad`` and ``librosa``. ``webrtcvad`` comes from the
``webrtcvad-wheels`` package: Resemblyzer declares ``webrtcvad``, which builds from source, and
the obsolete ``typing`` backport, so it is installed with ``--no-deps`` from
``requirements-nodeps.txt``. It is imported on first use, not with this module.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch

from engine.errors import TimbreError

SAMPLE_RATE = 16_000
"""Sample rate in Hz the encoder expects (``resemblyzer.hparams.sampling_rate``)."""

EMBEDDING_SIZE = 256
"""Length of one embedding (``resemblyzer.hparams.model_embedding_size``)."""

LEVEL_DBFS = -30.0
"""RMS level in dBFS each utterance is set to before embedding
(``resemblyzer.hparams.audio_norm_target_dBFS``; see the module docstring for why always)."""

MIN_SECONDS = 1.25
"""Shortest utterance :func:`embed` accepts, in seconds of audio left after long silences are
trimmed. The encoder reads 1.6 s windows and zero-pads shorter audio, and a clip's similarity
to its own voice falls as the clip gets shorter. Measured on espeak-ng sentences cut to a
length (two cuts of each of 8 sentences), against the reference of the whole ``en-us``
sentences. Each pair below is the lowest of the same voice and the highest of another voice
(``en-us+f3``): 0.5 s 0.55 / 0.50, 0.75 s 0.62 / 0.53, 1.0 s 0.74 / 0.57, 1.25 s 0.79 / 0.61,
1.5 s 0.80 / 0.68, 2 s 0.86 / 0.64, 2.5 s 0.88 / 0.64. From 1.25 s the same voice stays
above :data:`SAME_SPEAKER_THRESHOLD`; at 1.0 s it does not."""

SAME_SPEAKER_THRESHOLD = 0.75
"""Cosine similarity to the voice's reference below which a clip may be another speaker.

Measured with this module on espeak-ng speech: 8 English sentences per voice, 2.7–3.7 s each,
decoded at 16 kHz. The figures are each clip's similarity to the median embedding of the
``en-us`` clips:

- the same voice (``en-us``): 0.91–0.96, mean 0.93 (clip to clip: 0.82–0.92, mean 0.86);
- the same espeak-ng speaker with another accent, reading the English text: ``en-gb``
  0.85–0.93, ``en-gb-scotland`` 0.87–0.92, ``fr`` 0.86–0.91, ``de`` 0.85–0.94, ``es`` 0.84–0.90;
- male variants of the voice: ``+m1`` 0.84–0.91, ``+m3`` 0.83–0.92, ``+m7`` 0.77–0.86;
- other voices: ``+klatt`` 0.69–0.78, ``+f1`` 0.69–0.77, ``+f2`` 0.67–0.73, ``+f3``
  0.57–0.65, ``+f4`` 0.59–0.67;
- the same voice cut to the shortest accepted length (:data:`MIN_SECONDS`), at least 0.79.

0.75 sits above every female variant's mean and below every male variant and every accent of
the same voice, with a margin of 0.04 to the shortest same-voice clips. DESIGN.md's figures
(same voice 0.90, another 0.65) agree. Synthetic voices are not people: two real speakers of
the same sex can score in the 0.7s, so a flag is a question for the user ("different
speaker?"), not a verdict.
"""

MAD_FACTOR = 3.0
"""A clip is an outlier only when its similarity is also more than ``MAD_FACTOR`` robust
standard deviations below the median of all the voice's similarities: below
``median - MAD_FACTOR × 1.4826 × MAD`` (MAD: median absolute deviation; × 1.4826 makes it
estimate the standard deviation of normally distributed values). This keeps a voice whose clips
all score low (noise, a poor microphone) from being flagged clip after clip. Three is the
"very conservative" cut-off of Leys et al., 2013 ("Detecting outliers: do not use standard
deviation around the mean, use absolute deviation around the median")."""


class SpeakerError(TimbreError, ValueError):
    """Audio that cannot be embedded (too short, silent, not 1-D, non-finite), or no embeddings."""


def _import_resemblyzer():
    """``resemblyzer`` imported with its one known warning silenced. Under scipy ≥ 1.15 its
    ``from scipy.ndimage.morphology import binary_dilation`` warns that the namespace is
    deprecated; only that message is ignored, and only during this import."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"Please import `binary_dilation` from the `scipy\.ndimage` namespace",
            category=DeprecationWarning,
        )
        import resemblyzer
        import resemblyzer.audio
    return resemblyzer


@functools.lru_cache(maxsize=2)
def load_encoder(device: str = "cpu"):
    """Resemblyzer's ``VoiceEncoder`` with its bundled weights on ``device``, loaded once per device.

    Loading takes under 0.1 s on a CPU (plus about 1 s for the first import of Resemblyzer and
    librosa); the model holds 1.4 M parameters. ``torch.load`` inside reads the weights with
    ``weights_only=True``, torch's default since 2.6. Free it with :func:`unload`.
    """
    resemblyzer = _import_resemblyzer()
    return resemblyzer.VoiceEncoder(device=device, verbose=False)


def unload() -> None:
    """Drop every loaded encoder (the next call loads again)."""
    load_encoder.cache_clear()


def _as_array(audio: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise SpeakerError(f"a speaker embedding needs 1-D mono audio, got shape {tuple(audio.shape)}")
    if not np.isfinite(audio).all():
        raise SpeakerError("audio contains non-finite samples (NaN or infinity)")
    return audio


def prepare(audio_16k: np.ndarray | torch.Tensor) -> np.ndarray:
    """What the encoder is given: ``audio_16k`` at :data:`LEVEL_DBFS` RMS, long silences trimmed.

    Args:
        audio_16k: 1-D float samples in [-1, 1] at 16 000 Hz (numpy array or torch tensor).

    Returns:
        A 1-D float32 numpy array at 16 000 Hz, at most as long as the input. Resemblyzer's
        ``trim_long_silences`` keeps 30 ms windows that webrtcvad (mode 3) finds voiced, after
        smoothing over 8 windows and widening by 6. It also drops the last partial window.

    Raises:
        SpeakerError: the audio is not 1-D, has non-finite samples, or is silent.
    """
    audio = _as_array(audio_16k)
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    if rms == 0.0:
        raise SpeakerError("audio is silent: nothing to embed")
    levelled = audio * np.float32(10 ** (LEVEL_DBFS / 20) / rms)
    return _import_resemblyzer().audio.trim_long_silences(levelled).astype(np.float32, copy=False)


def embed(audio_16k: np.ndarray | torch.Tensor, device: str = "cpu") -> np.ndarray:
    """The speaker embedding of one utterance (``VoiceEncoder.embed_utterance``).

    The prepared audio (:func:`prepare`) is cut into 1.6 s windows, 1.3 per second, and the
    last window is zero-padded. The embedding is the L2-normalised mean of the windows'
    embeddings. Resemblyzer's defaults are kept (``rate=1.3``, ``min_coverage=0.75``).

    Args:
        audio_16k: 1-D float samples in [-1, 1] at :data:`SAMPLE_RATE` (16 000 Hz).
        device: torch device of the encoder (see :func:`load_encoder`).

    Returns:
        float32 array of shape ``(256,)``, L2 norm 1, entries ≥ 0.

    Raises:
        SpeakerError: (a ValueError) fewer than :data:`MIN_SECONDS` of audio are left after
            trimming silences, or the audio is silent, not 1-D or non-finite.
    """
    prepared = prepare(audio_16k)
    seconds = prepared.size / SAMPLE_RATE
    if seconds < MIN_SECONDS:
        raise SpeakerError(
            f"audio too short for a speaker embedding: {seconds:.2f} s after trimming silences, "
            f"need at least {MIN_SECONDS:g} s"
        )
    return load_encoder(device).embed_utterance(prepared).astype(np.float32)


def embed_many(audios, device: str = "cpu") -> np.ndarray:
    """:func:`embed` of each utterance in ``audios`` (a sequence of 1-D 16 kHz arrays or tensors).

    Returns:
        float32 array of shape ``(N, 256)``, one row per utterance, in order; ``(0, 256)`` for
        none. About 0.1 s per 3-second utterance on one CPU core, measured; the first call
        takes about 2 s more while librosa starts up.

    Raises:
        SpeakerError: for the first utterance that cannot be embedded; its message gives its index.
    """
    rows = []
    for index, audio in enumerate(audios):
        try:
            rows.append(embed(audio, device))
        except SpeakerError as error:
            raise SpeakerError(f"utterance {index}: {error}") from error
    return np.stack(rows) if rows else np.zeros((0, EMBEDDING_SIZE), dtype=np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (any length, equal): 1 = same direction. For two
    :func:`embed` results, which are unit vectors with entries ≥ 0, it lies in [0, 1]. This
    is the speaker similarity (SECS) used to score generated speech."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        raise SpeakerError("cosine of a zero vector is undefined")
    return float(a @ b) / norms


def reference_embedding(embeddings: np.ndarray) -> np.ndarray:
    """The voice's reference: the element-wise median of its clips' embeddings, L2-normalised.

    The median rather than the mean, so that a minority of clips from another speaker (up to
    almost half) hardly moves it.

    Args:
        embeddings: ``(N, 256)`` array of :func:`embed` results, N ≥ 1.

    Returns:
        float32 array of shape ``(256,)`` with L2 norm 1.

    Raises:
        SpeakerError: no embeddings, or a wrong shape.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise SpeakerError(f"need a non-empty (N, {EMBEDDING_SIZE}) array of embeddings, got shape {embeddings.shape}")
    median = np.median(embeddings, axis=0)
    norm = float(np.linalg.norm(median))
    if norm == 0.0:
        raise SpeakerError("the median embedding is zero")
    return (median / norm).astype(np.float32)


def _leave_one_out_medians(values: np.ndarray) -> np.ndarray:
    """Row ``i``: the element-wise median of all rows but ``i``, for ``values`` of shape (N, D),
    N ≥ 2. One sort per column instead of N medians: without row ``i``, whose rank in column
    ``d`` is ``r``, the ``j``-th smallest of the others is ``sorted[j]`` if ``j < r``, else
    ``sorted[j + 1]``. Equal to ``np.median(np.delete(values, i, 0), 0)``."""
    n = len(values)
    order = np.argsort(values, axis=0, kind="stable")
    ordered = np.take_along_axis(values, order, axis=0)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(n)[:, None], order.shape), axis=0)

    def smallest(j: int) -> np.ndarray:  # (N, D): the j-th smallest value of the other rows
        return np.where(j < rank, ordered[j], ordered[min(j + 1, n - 1)])

    rest = n - 1
    return smallest(rest // 2) if rest % 2 else (smallest(rest // 2 - 1) + smallest(rest // 2)) / 2


def speaker_similarities(embeddings: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity of each embedding to the voice's reference.

    Args:
        embeddings: ``(N, 256)`` array of :func:`embed` results.
        reference: a ``(256,)`` reference (e.g. :func:`reference_embedding` of other clips).
            When None, each clip is compared with the reference of all the *other* clips
            (leave-one-out), so a clip does not pull the reference toward itself: measured
            with 8 clips of one espeak-ng voice and 1 of another, the odd clip scored 0.79
            against a median that included it and 0.77 against the first 8 alone. With a
            single clip it is compared with itself (1.0).

    Returns:
        float64 array of shape ``(N,)``; see :data:`SAME_SPEAKER_THRESHOLD` for typical values.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2:
        raise SpeakerError(f"need an (N, {EMBEDDING_SIZE}) array of embeddings, got shape {embeddings.shape}")
    if reference is not None:
        references = np.broadcast_to(np.asarray(reference, dtype=np.float64), embeddings.shape)
    elif len(embeddings) == 1:
        references = embeddings
    else:
        references = _leave_one_out_medians(embeddings)
    norms = np.linalg.norm(embeddings, axis=1) * np.linalg.norm(references, axis=1)
    return np.einsum("nd,nd->n", embeddings, references) / np.where(norms == 0.0, 1.0, norms)


def speaker_outliers(
    embeddings: np.ndarray,
    threshold: float = SAME_SPEAKER_THRESHOLD,
    mad_factor: float = MAD_FACTOR,
) -> list[int]:
    """Indices of the clips that may be another speaker ("different speaker?").

    A clip is flagged when its similarity to the median embedding of the other clips
    (:func:`speaker_similarities`, leave-one-out) is below ``threshold`` and also below
    ``median - mad_factor × 1.4826 × MAD`` of all the similarities. The first condition is an absolute
    bound, measured in :data:`SAME_SPEAKER_THRESHOLD`. The second keeps a voice whose clips all
    score low from being flagged wholesale (see :data:`MAD_FACTOR`).

    Args:
        embeddings: ``(N, 256)`` array of :func:`embed` results of one voice's clips.
        threshold: absolute similarity bound (default :data:`SAME_SPEAKER_THRESHOLD`, 0.75).
        mad_factor: how many robust standard deviations (1.4826 × MAD) below the median a
            clip must also be (default :data:`MAD_FACTOR`, 3).

    Returns:
        Sorted indices into ``embeddings``; empty when none is flagged or N < 3 (with fewer
        than three clips there is no majority to be an outlier from).
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] < 3:
        return []
    similarity = speaker_similarities(embeddings)
    median = float(np.median(similarity))
    mad = float(np.median(np.abs(similarity - median)))
    bound = min(threshold, median - mad_factor * 1.4826 * mad)
    return [int(i) for i in np.flatnonzero(similarity < bound) if math.isfinite(similarity[i])]
