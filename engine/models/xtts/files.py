"""The XTTS-v2 base model: its files, their download (after licence acceptance), a tiny random
stand-in with the same layout for tests, and loading the model pieces from coqui-tts.

Files of an XTTS-v2 folder (the model hub repository ``coqui/XTTS-v2``)::

    model.pth          GPT + HiFi-GAN decoder weights ({"model": state_dict})
    config.json        XttsConfig (coqui-tts)
    vocab.json         the BPE tokenizer (``tokenizers`` JSON)
    dvae.pth           the discrete VAE that turns mel spectrograms into audio codes
    mel_stats.pth      per-channel mel normalisation, a tensor of shape (80,)
    speakers_xtts.pth  the built-in speakers (optional for fine-tuning)

Nothing in this module downloads at import; :func:`download_base_model` is only called when
the user accepts the licence in the Settings tab.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import paths
from engine.errors import TimbreError
from engine.files import copy_atomic
from engine.languages import CODES

HUB_REPO = "coqui/XTTS-v2"
REQUIRED_FILES = ("model.pth", "config.json", "vocab.json", "dvae.pth", "mel_stats.pth")
OPTIONAL_FILES = ("speakers_xtts.pth",)
ALL_FILES = REQUIRED_FILES + OPTIONAL_FILES

LICENSE_NAME = "Coqui Public Model License 1.0.0 (CPML)"
LICENSE_SUMMARY = (
    "XTTS-v2's weights are released under the Coqui Public Model License 1.0.0: use, fine-tuning "
    "and sharing of the model and its outputs are allowed for non-commercial purposes only. "
    "Read the full text at https://coqui.ai/cpml before downloading."
)

#: Languages XTTS-v2 speaks (its config.json ``languages``); each has a ``[code]`` text token.
#: The list, names and Whisper mapping live in :mod:`engine.languages`.
LANGUAGES = CODES

# XTTS-v2's audio layout (config.json "audio"): the GPT works on 22.05 kHz audio, the HiFi-GAN
# decoder writes 24 kHz, and one DVAE code covers 1024 samples (22050 / 1024 = 21.5 codes/s).
SAMPLE_RATE = 22050
OUTPUT_SAMPLE_RATE = 24000
CODE_STRIDE = 1024


class BaseModelError(TimbreError, RuntimeError):
    """The base-model folder is missing files or holds files that cannot be read."""


@dataclass(frozen=True)
class BaseModelStatus:
    """What a base-model folder holds: ``missing`` lists required files that are absent."""

    directory: Path
    present: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def ready(self) -> bool:
        return not self.missing

    def describe(self) -> str:
        if self.ready:
            return f"XTTS-v2 base model ready in {self.directory}"
        return f"XTTS-v2 base model missing in {self.directory}: {', '.join(self.missing)}"


def base_model_status(directory: str | os.PathLike | None = None) -> BaseModelStatus:
    """Which XTTS-v2 files ``directory`` (default models/xtts-v2/) holds."""
    directory = Path(directory) if directory else paths.default_base_model_dir()
    present = tuple(f for f in ALL_FILES if (directory / f).is_file())
    missing = tuple(f for f in REQUIRED_FILES if f not in present)
    return BaseModelStatus(directory, present, missing)


def require_base_model(directory: str | os.PathLike | None = None) -> Path:
    """Return the base-model folder, or raise BaseModelError naming the missing files."""
    status = base_model_status(directory)
    if not status.ready:
        raise BaseModelError(f"{status.describe()}. Download it from the Settings tab or pass --base-model DIR.")
    return status.directory


def download_base_model(
    directory: str | os.PathLike | None = None,
    accept_license: bool = False,
    progress: Callable[[float, str], None] | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Download the six XTTS-v2 files from the model hub into ``directory`` (default models/xtts-v2/).

    Requires ``accept_license=True`` (the user has read :data:`LICENSE_SUMMARY`). Files already
    present are kept. ``progress(fraction, description)`` is called per file. Each file is
    fetched by ``huggingface_hub.hf_hub_download`` (resumable, checksummed) into a cache and then
    copied into place, so an interrupted download never leaves a half-written model file.
    Raises PermissionError without licence acceptance; network errors propagate.
    """
    if not accept_license:
        raise PermissionError(f"the XTTS-v2 weights are under the {LICENSE_NAME}; accept it to download")
    from huggingface_hub import (
        hf_hub_download,
    )  # imported here: nothing touches the network at import

    directory = Path(directory) if directory else paths.default_base_model_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(ALL_FILES):
        if progress:
            progress(index / len(ALL_FILES), f"downloading {name}")
        if (directory / name).is_file():
            log(f"{name}: already present")
            continue
        cached = hf_hub_download(repo_id=HUB_REPO, filename=name)
        copy_atomic(Path(cached), directory / name)
        log(f"{name}: downloaded")
    if progress:
        progress(1.0, "done")
    return directory


def load_xtts_config(directory: str | os.PathLike):
    """Read ``config.json`` of a base-model folder into coqui's ``XttsConfig``."""
    from TTS.tts.configs.xtts_config import XttsConfig

    path = Path(directory) / "config.json"
    if not path.is_file():
        raise BaseModelError(f"{path}: missing")
    config = XttsConfig()
    try:
        config.load_json(str(path))
    except (ValueError, KeyError, TypeError) as exc:
        raise BaseModelError(f"{path}: not an XTTS config: {exc}") from None
    return config


def load_xtts(directory: str | os.PathLike, device: str | torch.device = "cpu", eval: bool = True):
    """Load coqui's ``Xtts`` (GPT + HiFi-GAN decoder + tokenizer) from a base-model folder.

    ``eval=True`` prepares the GPT for inference (KV cache); training uses ``eval=False``.
    The DVAE is not part of ``Xtts``; see :func:`load_dvae`. Raises BaseModelError.
    """
    from TTS.tts.models.xtts import Xtts

    directory = require_base_model(directory)
    config = load_xtts_config(directory)
    model = Xtts(config)
    try:
        model.load_checkpoint(config, checkpoint_dir=str(directory), eval=eval, strict=True)
    except (RuntimeError, KeyError, EOFError) as exc:
        raise BaseModelError(f"{directory / 'model.pth'}: cannot be loaded into XTTS: {exc}") from None
    model.mel_stats.copy_(load_mel_stats(directory))
    return model.to(device)


def load_mel_stats(directory: str | os.PathLike) -> torch.Tensor:
    """``mel_stats.pth``: the per-channel mel normalisation, shape (80,)."""
    path = Path(directory) / "mel_stats.pth"
    stats = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(stats, torch.Tensor) or stats.shape != (80,):
        raise BaseModelError(f"{path}: expected a tensor of shape (80,)")
    return stats


def build_dvae():
    """coqui's DiscreteVAE with XTTS-v2's architecture (gpt_trainer.py: 1024 codes, 512 wide)."""
    from TTS.tts.layers.xtts.dvae import DiscreteVAE

    return DiscreteVAE(
        channels=80,
        normalization=None,
        positional_dims=1,
        num_tokens=1024,
        codebook_dim=512,
        hidden_dim=512,
        num_resnet_blocks=3,
        kernel_size=3,
        num_layers=2,
        use_transposed_convs=False,
    )


def load_dvae(directory: str | os.PathLike):
    """The DVAE from ``dvae.pth``, in eval mode with gradients off (it is never trained)."""
    path = Path(directory) / "dvae.pth"
    dvae = build_dvae()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        dvae.load_state_dict(state, strict=False)
    except (RuntimeError, EOFError, OSError) as exc:
        raise BaseModelError(f"{path}: cannot be loaded as the XTTS DVAE: {exc}") from None
    dvae.eval().requires_grad_(False)
    return dvae


def dvae_mel_transform(mel_stats: torch.Tensor):
    """The mel spectrogram the DVAE reads (coqui gpt_trainer: n_fft 1024, hop 256, 80 mels, 22.05 kHz)."""
    return _mel_transform(mel_stats, n_fft=1024)


def style_mel_transform(mel_stats: torch.Tensor):
    """The mel spectrogram of the GPT's conditioning encoder (coqui gpt_trainer: n_fft 2048, hop 256)."""
    return _mel_transform(mel_stats, n_fft=2048)


def _mel_transform(mel_stats: torch.Tensor, n_fft: int):
    import torchaudio

    spectrogram = torchaudio.transforms.MelSpectrogram(
        n_fft=n_fft, hop_length=256, win_length=1024, power=2, normalized=False,
        sample_rate=SAMPLE_RATE, f_min=0, f_max=8000, n_mels=80, norm="slaney",
    )  # fmt: skip

    def transform(audio: torch.Tensor) -> torch.Tensor:
        """(batch, samples) at 22.05 kHz → log mel / mel_stats, (batch, 80, frames), hop 256."""
        mel = spectrogram.to(audio.device)(audio)
        return torch.log(torch.clamp(mel, min=1e-5)) / mel_stats.to(audio.device).view(1, -1, 1)

    return transform


# --------------------------------------------------------------------------------------------
# Random models with the XTTS-v2 file layout (tests, benchmarks, offline checks)

#: The file that marks a folder as a random model (not real XTTS-v2); it holds the dimensions.
#: Named for the first, tiny, random model; a full-size one is marked by the same file.
RANDOM_MODEL_MARKER = "TINY_RANDOM_MODEL.json"


@dataclass(frozen=True)
class RandomModelSize:
    """The dimensions of a random model with the XTTS-v2 layout.

    ``layers`` x ``width`` channels x ``heads`` attention heads of the GPT; the HiFi-GAN decoder
    reads GPT latents, so its input is ``width`` wide (XTTS-v2: ``decoder_input_dim`` 1024 =
    the GPT width) and otherwise has coqui's ``HifiDecoder`` defaults, which are XTTS-v2's.
    ``vocab_size``: text tokens of the tokenizer (``gpt_number_text_tokens``); None keeps the
    tokenizer this module builds from coqui's files (273 tokens, :func:`random_model_tokenizer`).
    """

    layers: int
    width: int
    heads: int
    vocab_size: int | None = None


#: ``tiny``: DESIGN.md's test model (2 / 64 / 4). ``full``: the released XTTS-v2
#: (config.json of ``coqui/XTTS-v2``: 30 layers x 1024 x 16 heads, ``gpt_number_text_tokens``
#: 6681); its GPT has 441,018,563 parameters, the HiFi-GAN decoder 25,856,300.
RANDOM_MODEL_SIZES = {
    "tiny": RandomModelSize(layers=2, width=64, heads=4),
    "full": RandomModelSize(layers=30, width=1024, heads=16, vocab_size=6681),
}


def is_random_model(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a random model written by :func:`write_random_model`."""
    return (Path(directory) / RANDOM_MODEL_MARKER).is_file()


def random_model_tokenizer(vocab_size: int | None = None):
    """A ``tokenizers.Tokenizer`` for a random model: coqui's shipped TorToiSe
    ``tokenizer.json`` (255 BPE tokens, English) plus XTTS's ``[START]`` and one ``[code]`` per
    language (273 in all), then, for ``vocab_size``, unused special tokens ``[UNUSED_n]`` up to
    that many ids. The released XTTS-v2 ``vocab.json`` (6681 multilingual BPE tokens) cannot be
    rebuilt offline; the fillers give the GPT its text embedding and head of the same shape, and
    XTTS's text cleaning (lower case) keeps text from ever matching a filler. Raises ValueError when
    ``vocab_size`` is below the 273 real tokens.
    """
    import TTS
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(TTS.__file__).parent / "tts/utils/assets/tortoise/tokenizer.json"))
    tokenizer.add_special_tokens(["[START]"] + [f"[{lang}]" for lang in LANGUAGES])
    size = max(tokenizer.get_vocab().values()) + 1
    if vocab_size is not None:
        if vocab_size < size:
            raise ValueError(f"vocab_size must be at least {size} (the real tokens), got {vocab_size}")
        tokenizer.add_special_tokens([f"[UNUSED_{n}]" for n in range(vocab_size - size)])
    return tokenizer


def random_model_config(size: str | RandomModelSize = "tiny"):
    """coqui's ``XttsConfig`` of a random model of ``size`` (a name in
    :data:`RANDOM_MODEL_SIZES` or a :class:`RandomModelSize`): XTTS-v2's non-default arguments
    (DESIGN.md: 1026 audio tokens, start/stop 1024/1025, the perceiver resampler; 605 audio
    and 402 text tokens at most, code stride 1024) with the GPT and decoder sized by ``size``.
    ``gpt_number_text_tokens`` is written only when ``size.vocab_size`` is set (as in the
    released config.json); otherwise coqui takes it from the tokenizer when the model loads.
    Raises ValueError for an unknown size name.
    """
    from TTS.tts.configs.xtts_config import XttsAudioConfig, XttsConfig
    from TTS.tts.models.xtts import XttsArgs

    if isinstance(size, str):
        if size not in RANDOM_MODEL_SIZES:
            raise ValueError(f"size must be one of {', '.join(RANDOM_MODEL_SIZES)}, got {size!r}")
        size = RANDOM_MODEL_SIZES[size]
    args = XttsArgs(
        gpt_layers=size.layers,
        gpt_n_model_channels=size.width,
        gpt_n_heads=size.heads,
        gpt_number_text_tokens=size.vocab_size,
        gpt_num_audio_tokens=1026,
        gpt_start_audio_token=1024,
        gpt_stop_audio_token=1025,
        gpt_use_perceiver_resampler=True,
        gpt_max_audio_tokens=605,
        gpt_max_text_tokens=402,
        gpt_code_stride_len=CODE_STRIDE,
        decoder_input_dim=size.width,
    )
    return XttsConfig(model_args=args, audio=XttsAudioConfig(), languages=list(LANGUAGES))


def write_random_model(directory: str | os.PathLike, size: str | RandomModelSize = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised model with the XTTS-v2 file layout into ``directory``.

    ``size``: ``"tiny"`` (2 layers x 64 x 4 heads: trains a step and synthesises on CPU in
    seconds, about 130 MB on disk), ``"full"`` (XTTS-v2's dimensions, :data:`RANDOM_MODEL_SIZES`:
    a 1.9 GB model.pth written in about 15 s with about 4 GB of memory) or a
    :class:`RandomModelSize`. The tokenizer is :func:`random_model_tokenizer`; the DVAE has
    XTTS-v2's real architecture (:func:`build_dvae`) with random weights; mel_stats is ones(80);
    :data:`RANDOM_MODEL_MARKER` records the dimensions and the seed. Its speech is noise.
    Returns ``directory``. Raises ValueError for an unknown size name.
    """
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer
    from TTS.tts.models.xtts import Xtts

    config = random_model_config(size)
    size = RANDOM_MODEL_SIZES[size] if isinstance(size, str) else size
    name = next((key for key, known in RANDOM_MODEL_SIZES.items() if known == size), "custom")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    random_model_tokenizer(size.vocab_size).save(str(directory / "vocab.json"))
    config.save_json(str(directory / "config.json"))

    # Built with the text-token count unset, so Xtts() does not build a GPT before the tokenizer
    # is in place (init_models builds it once, sized by the tokenizer).
    unsized = copy.deepcopy(config)
    unsized.model_args.gpt_number_text_tokens = None
    model = Xtts(unsized)
    model.tokenizer = VoiceBpeTokenizer(vocab_file=str(directory / "vocab.json"))
    model.init_models()
    torch.save({"model": model.state_dict()}, directory / "model.pth")
    del model
    torch.save(build_dvae().state_dict(), directory / "dvae.pth")
    torch.save(torch.ones(80), directory / "mel_stats.pth")
    marker = {"size": name, "layers": size.layers, "width": size.width, "heads": size.heads,
              "vocab_size": size.vocab_size, "seed": seed}  # fmt: skip
    (directory / RANDOM_MODEL_MARKER).write_text(json.dumps(marker) + "\n")
    return directory


def write_tiny_model(
    directory: str | os.PathLike,
    seed: int = 0,
    layers: int = 2,
    width: int = 64,
    heads: int = 4,
) -> Path:
    """A tiny random model (DESIGN.md: 2 layers / 64 wide / 4 heads) with the XTTS-v2 file layout
    in ``directory``: :func:`write_random_model` with those dimensions. Returns ``directory``."""
    return write_random_model(directory, RandomModelSize(layers, width, heads), seed)
