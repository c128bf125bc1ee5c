"""F5-TTS behind the interface of :class:`engine.generate.synthesis.Synthesizer`, so outputs, history,
candidates and checkpoint scoring (engine.training.evaluation) work for both families unchanged.

F5-TTS conditions on a reference recording *and its transcript*: :meth:`F5Synthesizer.conditioning`
pairs each reference with its text from the voice's dataset (train.csv / validation.csv), and
when the chosen references carry no transcript (plain recordings) it takes the voice's dataset
clip nearest 8 s long instead, saying so in the log. The model and vocoder are loaded once per
(folder, weights) and kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from engine import paths, runs
from engine.models.f5.generate import F5GenerationError, synthesize

#: The preferred length of a reference taken from the dataset (F5 uses up to 12 s).
PREFERRED_REFERENCE_SECONDS = 8.0


class F5Synthesizer:
    """A loaded F5-TTS model that generates speech (engine.generate.synthesis's Synthesizer interface).

    Args:
        base_model: an F5-TTS folder (engine.models.f5.files).
        device: "cpu", "cuda" or None for CUDA when available.
    """

    family = "f5"

    def __init__(self, base_model: str | Path, device: str | None = None):
        self.base_model = Path(base_model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = None  # no XTTS model: scoring skips XTTS's own speaker encoder
        self.weights = None
        self.loads = 0
        self._files: dict[bool, Path] = {}  # use_ema -> the checkpoint's weights file
        self._states: dict[bool, dict[str, torch.Tensor]] = {}
        self._identity: str | None = None

    def load(self, weights, log: Callable[[str], None] = print):
        """Use ``weights`` (engine.generate.weights.ModelWeights): its folder and, for a run, the
        checkpoint's weights; its EMA weights (ema.safetensors) too when it has them, chosen per
        call by the settings' ``use_ema``."""
        identity = f"{weights.model_dir}|{weights.gpt}"
        if identity != self._identity:
            self._states = {}
            self._files = {}
            if weights.gpt is not None:
                ema = Path(weights.gpt).parent / runs.EMA_FILE
                self._files = {False: Path(weights.gpt), **({True: ema} if ema.is_file() else {})}
                log(f"using the weights of {weights.model} {weights.checkpoint or ''}"
                    + (" (EMA weights available)" if ema.is_file() else ""))  # fmt: skip
            self.loads += 1
            self._identity = identity
        self.weights = weights
        self.model_dir = Path(weights.model_dir)
        return None

    def _state(self, use_ema: bool) -> dict[str, torch.Tensor] | None:
        """The checkpoint's weights to speak with (None: the folder's own), read once."""
        if not self._files:
            return None
        key = use_ema and True in self._files
        if key not in self._states:
            from safetensors.torch import load_file

            self._states[key] = load_file(str(self._files[key]))
        return self._states[key]

    def conditioning(self, references: list[Path], cache_dir: Path | None = None, log: Callable[[str], None] = print):
        """``[(reference wav, its transcript)]`` for ``references`` (files of a voice). Raises
        F5GenerationError when neither they nor the voice's dataset give a transcribed clip."""
        texts = _dataset_texts(references)
        pairs = [(Path(r), texts[_key(r)]) for r in references if _key(r) in texts]
        if pairs:
            return pairs
        if not texts:
            raise F5GenerationError(
                "F5-TTS needs a reference clip with its transcript: prepare the voice's dataset (its clips carry "
                "their text) or choose dataset clips as references"
            )
        clip = _nearest_clip(texts)
        log(f"F5-TTS needs a transcribed reference: using the dataset clip {clip.name}")
        return [(clip, texts[_key(clip)])]

    def synthesize(self, text: str, references, settings, language: str) -> torch.Tensor:
        """1-D float32 audio at 24 kHz (engine.models.f5.generate.synthesize with the settings'
        nfe_step, cfg_strength, sway_sampling_coef, speed and seed)."""
        audio, _rate = synthesize(
            self.model_dir, self._state(getattr(settings, "use_ema", True)), references, text, nfe_step=settings.nfe_step,
            cfg_strength=settings.cfg_strength, sway_sampling_coef=settings.sway_sampling_coef,
            speed=settings.speed, seed=settings.seed, device=self.device, log=lambda line: None,
        )  # fmt: skip
        return torch.from_numpy(audio)

    def stream(self, text: str, references, settings, language: str) -> Iterator[torch.Tensor]:
        """F5-TTS fills in the whole utterance at once: one chunk."""
        yield self.synthesize(text, references, settings, language)

    def warm_up(self) -> float:
        return 0.0

    def unload(self) -> None:
        self._files, self._states, self._identity, self.weights = {}, {}, None, None


def _key(path) -> str:
    return os.path.normcase(os.path.realpath(path))


def _voice_of(path: Path) -> str | None:
    """The voice a reference file belongs to (voices/<voice>/… or datasets/<voice>/…)."""
    try:
        parts = Path(os.path.relpath(Path(path).resolve(), paths.home().resolve())).parts
    except ValueError:
        return None
    return parts[1] if len(parts) > 2 and parts[0] in ("voices", "datasets") else None


def _dataset_texts(references: list[Path]) -> dict[str, str]:
    """{file key: transcript} of the dataset clips of the references' voice(s)."""
    from engine.config import dataset_texts

    texts: dict[str, str] = {}
    for voice in {v for v in map(_voice_of, references) if v}:
        folder = paths.dataset_dir(voice)
        texts |= {_key(folder / audio): text.strip() for audio, text in dataset_texts(folder) if text.strip()}
    return texts


def _nearest_clip(texts: dict[str, str]) -> Path:
    """The clip whose length is nearest :data:`PREFERRED_REFERENCE_SECONDS` (ties: name order)."""
    import soundfile

    def distance(key: str) -> tuple[float, str]:
        try:
            seconds = soundfile.info(key).duration
        except RuntimeError:
            seconds = 0.0
        return abs(seconds - PREFERRED_REFERENCE_SECONDS), key

    return Path(min(texts, key=distance))
