"""The F5-TTS v1 base-model folder: its files, download (after licence acceptance), a random
stand-in with the same layout, and loading the CFM model and the Vocos vocoder from it.

Files of an F5-TTS base-model folder (see :mod:`engine.models.f5` for the whole layout)::

    model.safetensors        CFM(DiT) weights, keys "ema_model.transformer...." (the hub format)
      or model_*.safetensors / model_*.pt (the hub's model_1250000.safetensors, F5 checkpoints)
    vocab.txt                one token per line (a character or a pinyin syllable), " " first
    model.yaml               optional: F5's config format (``model.arch``, ``model.mel_spec``);
                             absent: f5_tts/configs/F5TTS_v1_Base.yaml, which the hub model uses
    vocoder/config.yaml      Vocos hyper-parameters (charactr/vocos-mel-24khz layout)
    vocoder/pytorch_model.bin  Vocos weights

f5_tts and vocos are imported inside the functions that need them: ``detect`` runs for every
base-model folder the app looks at, and must stay cheap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from engine.errors import TimbreError
from engine.files import copy_atomic

HUB_REPO = "SWivid/F5-TTS"
HUB_WEIGHTS = "F5TTS_v1_Base/model_1250000.safetensors"
HUB_VOCAB = "F5TTS_v1_Base/vocab.txt"
VOCODER_REPO = "charactr/vocos-mel-24khz"

WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "model.yaml"
VOCODER_DIR = "vocoder"
VOCODER_FILES = ("vocoder/config.yaml", "vocoder/pytorch_model.bin")

#: Same name as the XTTS-v2 family's marker, so family-neutral code recognises either.
RANDOM_MODEL_MARKER = "TINY_RANDOM_MODEL.json"

#: F5-TTS's mel spectrogram (f5_tts/configs/F5TTS_v1_Base.yaml ``model.mel_spec``): 24 kHz,
#: 100 mel bands, hop 256 (93.75 frames/s), window and FFT 1024, Vocos-style log-mel.
MEL_SPEC = {
    "target_sample_rate": 24000,
    "n_mel_channels": 100,
    "hop_length": 256,
    "win_length": 1024,
    "n_fft": 1024,
    "mel_spec_type": "vocos",
}

#: F5-TTS v1 Base's DiT (F5TTS_v1_Base.yaml ``model.arch``; f5_tts/train/finetune_cli.py).
FULL_ARCH = {"dim": 1024, "depth": 22, "heads": 16, "ff_mult": 2, "text_dim": 512, "conv_layers": 4}
#: DESIGN.md's tiny test model: trains a step and samples on CPU in a fraction of a second.
TINY_ARCH = {"dim": 64, "depth": 2, "heads": 2, "ff_mult": 2, "text_dim": 32, "conv_layers": 1}
#: Vocos backbones: charactr/vocos-mel-24khz config.yaml (512 wide, 1536 inner, 8 layers) and tiny.
FULL_VOCODER = {"dim": 512, "intermediate_dim": 1536, "num_layers": 8}
TINY_VOCODER = {"dim": 64, "intermediate_dim": 128, "num_layers": 2}
RANDOM_MODEL_SIZES = {"tiny": (TINY_ARCH, TINY_VOCODER), "full": (FULL_ARCH, FULL_VOCODER)}

# The rest of F5TTS_v1_Base.yaml's arch, written out so model.yaml is complete.
_ARCH_REST = {
    "text_mask_padding": True,
    "qk_norm": None,
    "pe_attn_head": None,
    "attn_backend": "torch",
    "attn_mask_enabled": False,
    "checkpoint_activations": False,
}


class F5ModelError(TimbreError, RuntimeError):
    """The F5-TTS base-model folder is missing files or holds files that cannot be read."""


# --------------------------------------------------------------------------------------------
# Locating the files


def weights_file(directory: Path) -> Path | None:
    """The folder's CFM weights: ``model.safetensors``, else the newest-step ``model_*.safetensors``
    then ``model_*.pt`` (F5's ``model_<updates>`` names); None when there is none."""
    directory = Path(directory)
    if (directory / WEIGHTS_FILE).is_file():
        return directory / WEIGHTS_FILE

    def step(path: Path) -> tuple[int, str]:
        tail = path.stem.split("_", 1)[-1]
        return (int(tail) if tail.isdigit() else -1, path.name)

    for pattern in ("model_*.safetensors", "model_*.pt"):
        found = sorted((p for p in directory.glob(pattern) if p.is_file()), key=step)
        if found:
            return found[-1]
    return None


def detect(directory: Path) -> bool:
    """Whether ``directory`` holds an F5-TTS model: ``vocab.txt`` and a weights file."""
    directory = Path(directory)
    return (directory / VOCAB_FILE).is_file() and weights_file(directory) is not None


def missing_files(directory: Path) -> list[str]:
    """Required files absent from ``directory``; empty when it is ready to train and speak."""
    directory = Path(directory)
    missing = [] if weights_file(directory) else [WEIGHTS_FILE]
    missing += [name for name in (VOCAB_FILE, *VOCODER_FILES) if not (directory / name).is_file()]
    return missing


# --------------------------------------------------------------------------------------------
# Reading the files


def read_vocab(directory: Path) -> dict[str, int]:
    """``{token: id}`` from vocab.txt, id = line number from 0, as f5_tts.model.utils.get_tokenizer
    ("custom") reads it. Ids index DiT's text embedding (row ``id + 1``; 0 is padding)."""
    vocab = {}
    with open(Path(directory) / VOCAB_FILE, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            vocab[line[:-1] if line.endswith("\n") else line] = index
    return vocab


def model_config(directory: Path) -> dict:
    """``{"arch": {...}, "mel_spec": {...}}``: model.yaml's ``model`` section, or F5TTS_v1_Base.yaml's
    (packaged with f5_tts) when the folder has none. Raises F5ModelError for a mel layout other
    than :data:`MEL_SPEC` (the vocoder and the cached features assume it)."""
    import yaml

    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        from importlib.resources import files

        path = Path(str(files("f5_tts").joinpath("configs/F5TTS_v1_Base.yaml")))
    try:
        model = yaml.safe_load(path.read_text(encoding="utf-8"))["model"]
        config = {"arch": dict(model["arch"]), "mel_spec": dict(model.get("mel_spec") or MEL_SPEC)}
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise F5ModelError(f"{path}: not an F5-TTS model config ({exc})") from None
    if config["mel_spec"] != MEL_SPEC:
        raise F5ModelError(f"{path}: mel_spec {config['mel_spec']} differs from F5-TTS v1's {MEL_SPEC}")
    return config


def config_yaml(arch: dict, name: str) -> str:
    """model.yaml text in F5's config format: ``model.arch`` is what
    ``f5_tts.infer.utils_infer.load_model(DiT, arch, ckpt, vocab_file=...)`` takes."""
    import yaml

    model = {
        "name": name,
        "tokenizer": "custom",
        "tokenizer_path": VOCAB_FILE,
        "backbone": "DiT",
        "arch": {**arch, **{key: value for key, value in _ARCH_REST.items() if key not in arch}},
        "mel_spec": dict(MEL_SPEC),
        "vocoder": {"is_local": True, "local_path": VOCODER_DIR},
    }
    return yaml.safe_dump({"model": model}, sort_keys=False)


def cfm_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CFM ``state_dict`` from any of the key formats in use: the hub's ``ema_model.*`` (plus
    ema-pytorch's ``initted`` / ``step``), ``torch.optim.swa_utils.AveragedModel``'s ``module.*``
    (plus ``n_averaged``), or plain ``transformer.*``. Torchaudio mel buffers of old F5 checkpoints
    are dropped, as f5_tts.infer.utils_infer.load_checkpoint does."""
    out = {}
    for key, value in state.items():
        if key in ("initted", "step", "n_averaged") or key.startswith("mel_spec."):
            continue
        for prefix in ("ema_model.", "module."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def hub_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (any format :func:`cfm_state_dict` reads) in the hub format, ``ema_model.*`` keys,
    which ``load_checkpoint(..., use_ema=True)`` (load_model's default) strips and loads strictly."""
    return {f"ema_model.{key}": value.detach().contiguous().cpu() for key, value in cfm_state_dict(state).items()}


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A CFM state_dict from a .safetensors file or an F5 training checkpoint .pt (its
    ``ema_model_state_dict``, else ``model_state_dict``). Raises F5ModelError when unreadable."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return cfm_state_dict(load_file(str(path)))
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise F5ModelError(f"{path}: cannot read the weights ({exc})") from None
    state = checkpoint.get("ema_model_state_dict") or checkpoint.get("model_state_dict") or checkpoint
    return cfm_state_dict(state)


def build_cfm(arch: dict, vocab: dict[str, int]):
    """An untrained ``f5_tts.model.CFM`` around ``DiT(**arch)``, built as f5_tts's load_model
    builds it (text_num_embeds = len(vocab), mel_dim 100, :data:`MEL_SPEC`, Euler ODE)."""
    from f5_tts.model import CFM, DiT

    return CFM(
        transformer=DiT(**arch, text_num_embeds=len(vocab), mel_dim=MEL_SPEC["n_mel_channels"]),
        mel_spec_kwargs=dict(MEL_SPEC),
        odeint_kwargs={"method": "euler"},
        vocab_char_map=vocab,
    )


def load_cfm(directory: Path, weights: dict[str, torch.Tensor] | None = None, device="cpu"):
    """The folder's CFM (float32, eval mode) on ``device``, with ``weights`` (a state_dict of the
    trained CFM, any key format of :func:`cfm_state_dict`) instead of the folder's weights when
    given. Loads strictly. Raises F5ModelError for missing files or weights that do not fit."""
    directory = Path(directory)
    if not detect(directory):
        raise F5ModelError(f"{directory}: not an F5-TTS model folder (needs {VOCAB_FILE} and {WEIGHTS_FILE})")
    model = build_cfm(model_config(directory)["arch"], read_vocab(directory))
    state = cfm_state_dict(weights) if weights is not None else read_weights(weights_file(directory))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise F5ModelError(f"{directory}: the weights do not fit the model in model.yaml: {exc}") from None
    return model.float().eval().to(device)


def load_vocoder(directory: Path, device="cpu"):
    """The folder's Vocos vocoder (``vocoder/config.yaml`` + ``vocoder/pytorch_model.bin``), eval
    mode, as f5_tts's ``load_vocoder("vocos", is_local=True)`` loads it. Raises F5ModelError."""
    from vocos import Vocos

    folder = Path(directory) / VOCODER_DIR
    try:
        vocoder = Vocos.from_hparams(str(folder / "config.yaml"))
        vocoder.load_state_dict(torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise F5ModelError(f"{folder}: cannot load the Vocos vocoder ({exc})") from None
    return vocoder.eval().to(device)


# --------------------------------------------------------------------------------------------
# Download


def download_base_model(
    directory: str | os.PathLike,
    accept_license: bool = False,
    progress: Callable[[float, str], None] | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Download F5-TTS v1 Base (``SWivid/F5-TTS``: F5TTS_v1_Base/model_1250000.safetensors, vocab.txt)
    and its vocoder (``charactr/vocos-mel-24khz``: config.yaml, pytorch_model.bin into vocoder/).

    Requires ``accept_license=True`` (the user has read the CC-BY-NC-4.0 summary). Files already
    present are kept; each is fetched by ``huggingface_hub.hf_hub_download`` (resumable,
    checksummed) and copied into place atomically. ``progress(fraction, description)`` per file.
    Raises PermissionError without licence acceptance; network errors propagate.
    """
    if not accept_license:
        raise PermissionError("the F5-TTS v1 weights are under CC-BY-NC-4.0; accept it to download")
    from huggingface_hub import hf_hub_download  # imported here: nothing touches the network at import

    directory = Path(directory)
    wanted = [
        (HUB_REPO, HUB_WEIGHTS, Path(HUB_WEIGHTS).name),
        (HUB_REPO, HUB_VOCAB, VOCAB_FILE),
        (VOCODER_REPO, "config.yaml", VOCODER_FILES[0]),
        (VOCODER_REPO, "pytorch_model.bin", VOCODER_FILES[1]),
    ]
    for index, (repo, name, target) in enumerate(wanted):
        if progress:
            progress(index / len(wanted), f"downloading {target}")
        if (directory / target).is_file():
            log(f"{target}: already present")
            continue
        cached = Path(hf_hub_download(repo_id=repo, filename=name))
        (directory / target).parent.mkdir(parents=True, exist_ok=True)
        copy_atomic(cached, directory / target)
        log(f"{target}: downloaded")
    if progress:
        progress(1.0, "done")
    return directory


# --------------------------------------------------------------------------------------------
# Random models


def random_vocab() -> list[str]:
    """Tokens for a random model's vocab.txt, " " first (id 0, which unknown tokens also map to in
    f5_tts's list_str_to_idx): printable ASCII; Latin-1 and Latin Extended-A letters (French,
    Spanish, German, Portuguese, Italian, Polish, Czech, Turkish ...); common typographic and CJK
    punctuation; and every pinyin syllable pypinyin knows with tones 1-5 and none (TONE3 style,
    what f5_tts's convert_char_to_pinyin writes for Chinese). The released vocab.txt (2545 tokens)
    is not rebuilt: a random model only needs the same kinds of tokens."""
    from pypinyin import Style, pinyin
    from pypinyin.pinyin_dict import pinyin_dict

    tokens = [" "] + [chr(c) for c in range(33, 127)]
    tokens += [chr(c) for c in range(0xA1, 0x180) if chr(c).isprintable() and c not in (0xAD, 0xD7, 0xF7)]
    tokens += list("×÷–—‘’“”„…«»‹›·•€、，。！？；：（）《》「」『』")
    syllables = set()
    for code in pinyin_dict:
        if 0x3100 <= code <= 0x9FFF:  # convert_char_to_pinyin's "is_chinese" range
            for reading in pinyin(chr(code), style=Style.TONE3, heteronym=True)[0]:
                syllables.add(reading.rstrip("012345"))
    tokens += sorted(s + tone for s in syllables if s.isascii() and s.isalpha() for tone in ("", *"12345"))
    return list(dict.fromkeys(tokens))  # keep the first of any duplicate


def _vocoder_config(dims: dict) -> dict:
    """Vocos config.yaml contents in charactr/vocos-mel-24khz's layout with backbone ``dims``."""
    return {
        "feature_extractor": {
            "class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
            "init_args": {"sample_rate": 24000, "n_fft": 1024, "hop_length": 256, "n_mels": 100, "padding": "center"},
        },
        "backbone": {"class_path": "vocos.models.VocosBackbone", "init_args": {"input_channels": 100, **dims}},
        "head": {
            "class_path": "vocos.heads.ISTFTHead",
            "init_args": {"dim": dims["dim"], "n_fft": 1024, "hop_length": 256, "padding": "center"},
        },
    }


def write_random_model(directory: str | os.PathLike, size: str = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised F5-TTS model with the base-model layout into ``directory``.

    ``size``: ``"tiny"`` (:data:`TINY_ARCH`, Vocos 64/128/2: about 1 MB, trains and samples on
    CPU in well under a second) or ``"full"`` (F5-TTS v1 Base's DiT, :data:`FULL_ARCH`, about
    336 M parameters, and vocos-mel-24khz's Vocos: a 1.35 GB model.safetensors, written with
    about 3 GB of memory). DiT zero-initialises its adaLN and output layers (a real checkpoint
    never has them zero); they get N(0, 0.02) here, so gradients reach every layer from the first
    step and the model's speech is noise, not silence. ``seed`` fixes all weights (the global
    torch RNG is restored afterwards). Writes model.safetensors (hub key format), vocab.txt
    (:func:`random_vocab`), model.yaml, vocoder/ and :data:`RANDOM_MODEL_MARKER`.
    Returns ``directory``. Raises ValueError for an unknown size.
    """
    if size not in RANDOM_MODEL_SIZES:
        raise ValueError(f"size must be one of {', '.join(RANDOM_MODEL_SIZES)}, got {size!r}")
    import yaml
    from safetensors.torch import save_file
    from vocos import Vocos

    arch, vocoder_dims = RANDOM_MODEL_SIZES[size]
    directory = Path(directory)
    (directory / VOCODER_DIR).mkdir(parents=True, exist_ok=True)
    tokens = random_vocab()
    (directory / VOCAB_FILE).write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    (directory / CONFIG_FILE).write_text(config_yaml(arch, f"timbre-random-{size}"), encoding="utf-8")
    vocoder_config = _vocoder_config(vocoder_dims)
    (directory / VOCODER_FILES[0]).write_text(yaml.safe_dump(vocoder_config, sort_keys=False), encoding="utf-8")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_cfm({**_ARCH_REST, **arch}, {t: i for i, t in enumerate(tokens)})
        dit = model.transformer
        zeroed = [b.attn_norm.linear for b in dit.transformer_blocks] + [dit.norm_out.linear, dit.proj_out]
        with torch.no_grad():
            for layer in zeroed:
                layer.weight.normal_(0.0, 0.02)
        parameters = sum(p.numel() for p in model.parameters())
        save_file(hub_state_dict(model.state_dict()), str(directory / WEIGHTS_FILE))
        os.chmod(directory / WEIGHTS_FILE, 0o644)
        del model, dit, zeroed
        vocoder = Vocos.from_hparams(str(directory / VOCODER_FILES[0]))
        torch.save(vocoder.state_dict(), directory / VOCODER_FILES[1])
    marker = {"family": "f5", "size": size, "arch": arch, "vocoder": vocoder_dims, "vocab_size": len(tokens),
              "parameters": parameters, "seed": seed}  # fmt: skip
    (directory / RANDOM_MODEL_MARKER).write_text(json.dumps(marker) + "\n")
    return directory


def is_random_model(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a random model written by :func:`write_random_model`."""
    return (Path(directory) / RANDOM_MODEL_MARKER).is_file()
