"""Training configuration: the ``TrainConfig`` dataclass and its YAML serialisation.

The dataclass is the single source of truth (house style 5): the command line, the web UI
and ``train.yaml`` are all built from it. Each field's documentation lives in ``FIELD_HELP``
beside its declaration and is reused as the UI's help text. ``train.yaml`` is
``yaml.safe_dump(asdict(config))``; loading fails on unknown keys, and ``__post_init__``
checks every value so a bad file is refused before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from engine import languages, paths
from engine.errors import TimbreError
from engine.files import write_text_atomic


class ConfigError(TimbreError, ValueError):
    """A training configuration that cannot be used; the message names the field or file."""


PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "adamw8bit")  # engine.training.performance.make_optimizer

#: Model families (engine.models): xtts (XTTS-v2) and f5 (F5-TTS v1).
FAMILIES = ("xtts", "f5")
#: Module groups of the XTTS GPT that ``freeze`` may name (engine.models.xtts).
FREEZE_GROUPS = (
    "text_embedding",
    "text_head",
    "mel_embedding",
    "mel_head",
    "conditioning_encoder",
    "transformer",
)
#: The groups each family's ``freeze`` may name; equal to each family's ``freeze_group_names``
#: (tests/test_model_families.py checks it), kept here so configuration imports no model code.
FREEZE_GROUPS_BY_FAMILY = {
    "xtts": FREEZE_GROUPS,
    "f5": ("text_embedding", "input_embedding", "time_embedding", "transformer_blocks", "output"),
}
LR_SCHEDULES = ("multistep", "warmup_linear")

FIELD_HELP: dict[str, str] = {}


def _f(default, help: str, **kwargs):
    """A dataclass field with its help text (filled into FIELD_HELP by the class below)."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class TrainConfig:
    """Everything one fine-tuning run needs; serialised as ``training/<voice>/<run>/train.yaml``.

    Defaults follow ai-voice-cloning and coqui's XTTS-v2 fine-tuning recipe
    (``recipes/ljspeech/xtts_v2/train_gpt_xtts.py``): AdamW, learning rate 5e-6,
    text/mel cross-entropy weights 0.01 / 1.0 (the TorToiSe defaults), MultiStepLR with gamma 0.5.
    """

    voice: str = _f(
        "",
        "Voice name: the dataset is datasets/<voice>/ and the references voices/<voice>/.",
    )
    run: str = _f("", "Run name: the run folder is training/<voice>/<run>/.")
    family: str = _f(
        "xtts",
        "Model family of the base model: xtts (XTTS-v2, a GPT over audio codes) or f5 (F5-TTS v1, flow "
        "matching on mel spectrograms). A new run reads it from the base-model folder.",
    )
    base_model: str = _f(
        "",
        "Base-model folder: XTTS-v2 files (model.pth, config.json, vocab.json, dvae.pth, mel_stats.pth) or "
        "F5-TTS files (model safetensors, vocab.txt, vocoder/). Empty: models/xtts-v2/.",
    )
    init_weights: str = _f(
        "",
        'Optional model.safetensors of GPT weights to start from ("start a new run from these '
        'weights"); empty starts from the base model.',
    )
    epochs: int = _f(10, "Full passes over the training clips.")
    learning_rate: float = _f(5e-6, "AdamW learning rate at the start (coqui's XTTS-v2 recipe uses 5e-6).")
    weight_decay: float = _f(1e-2, "AdamW weight decay (coqui's XTTS-v2 recipe uses 1e-2).")
    text_loss_weight: float = _f(
        0.01,
        "Weight of the text cross-entropy in the optimised loss (TorToiSe default 0.01). For a voice "
        "in a language the model knows, text CE need not fall much.",
    )
    mel_loss_weight: float = _f(
        1.0,
        "Weight of the mel-code cross-entropy (TorToiSe default 1.0): what makes the voice.",
    )
    milestones: list[int] = _f(
        [],
        "Epochs after which the learning rate is multiplied by gamma (MultiStepLR, in epochs as in "
        "ai-voice-cloning). Empty keeps it constant.",
    )
    gamma: float = _f(0.5, "Factor applied to the learning rate at each milestone.")
    lr_schedule: str = _f(
        "multistep",
        "multistep: the learning rate is multiplied by gamma after each milestone epoch (XTTS recipes); "
        "warmup_linear: it rises linearly over the warm-up updates, then falls linearly to zero at the last "
        "update (F5-TTS's fine-tuning recipe).",
    )
    warmup_fraction: float = _f(
        0.05,
        "warmup_linear: share of all updates spent warming up (F5-TTS: 5 %).",
    )
    warmup_min_updates: int = _f(
        100,
        "warmup_linear: at least this many warm-up updates when the run has four times as many in all.",
    )
    batch_frames: int = _f(
        0,
        "Batch size counted in mel frames per GPU (F5-TTS's unit; its recipe uses 3200 frames, about 34 s of "
        "audio): clips sorted by length are packed up to this many frames. 0: batches count clips (batch_size).",
    )
    ema_decay: float = _f(
        0.0,
        "Keep an exponential moving average (EMA) of the weights with this decay per update (e.g. 0.999), "
        "saved in each checkpoint as ema.safetensors; generation can use it or the raw weights. 0: off "
        "(F5-TTS's authors: EMA 'might be harmful for early fine-tunes').",
    )
    batch_size: int = _f(
        4,
        "Clips per optimizer step across all GPUs (the global batch), before gradient accumulation splits it.",
    )
    gradient_accumulation: int = _f(
        1,
        "Micro-batches accumulated per optimizer step: each holds batch_size / (gradient_accumulation x GPUs) "
        "clips, so memory falls while the effective batch stays batch_size.",
    )
    validate_every: int = _f(1, "Run validation every this many epochs (0: never).")
    save_every: int = _f(1, "Save a checkpoint every this many epochs (one is always saved at the end).")
    keep_checkpoints: int = _f(2, "Newest checkpoints kept (the best by validation loss is kept as well).")
    max_steps: int = _f(
        0,
        "Stop after this many optimizer steps in total (0: no limit; the epochs decide).",
    )
    gpus: int | list[int] = _f(
        1,
        "Number of GPUs, or a list of device ids. More than one runs under torchrun with DDP.",
    )
    precision: str = _f("fp32", "fp32, bf16 (Ampere and newer), or fp16 (with a gradient scaler).")
    tf32: bool = _f(
        True,
        "On Ampere and newer GPUs, run fp32 matmuls on tensor cores in TF32 (10-bit mantissa): much faster "
        "fp32 training, PyTorch's recommendation; no effect on the CPU or with bf16/fp16.",
    )
    optimizer: str = _f(
        "adamw",
        "adamw (PyTorch's AdamW, fused on a GPU) or adamw8bit (bitsandbytes: both moments in 8 bits, about "
        "a quarter of the optimizer memory, for small GPUs).",
    )
    gradient_checkpointing: bool = _f(
        False,
        "Recompute the GPT blocks' activations in the backward pass instead of keeping them: much less GPU "
        "memory for longer or larger batches, at about one more forward pass of compute per step.",
    )
    freeze: list[str] = _f(
        [],
        "Module groups left untouched, parameters and buffers: "
        + "; ".join(f"{name}: {', '.join(groups)}" for name, groups in FREEZE_GROUPS_BY_FAMILY.items())
        + ".",
    )
    max_grad_norm: float = _f(1.0, "Gradients are clipped to this L2 norm (0: no clipping).")
    max_text_tokens: int = _f(
        200,
        "Clips whose transcript has more text tokens are rejected by the dataset check.",
    )
    max_audio_seconds: float = _f(
        11.6,
        "Clips longer than this are rejected by the dataset check (XTTS-v2 trains on up to ~11.6 s).",
    )
    min_audio_seconds: float = _f(0.5, "Clips shorter than this are rejected by the dataset check.")
    min_training_clips: int = _f(
        4,
        "Training refuses to start with fewer usable training clips than this (one clip 'trains' and learns nothing).",
    )
    num_workers: int = _f(0, "DataLoader worker processes (0: load in the training process).")
    seed: int = _f(
        1234,
        "Seed for shuffling, conditioning slices and initialisation; the same seed repeats a run exactly.",
    )
    language: str = _f(
        languages.DEFAULT_LANGUAGE,
        "Language of the transcripts, one of XTTS-v2's codes: " + ", ".join(languages.CODES) + ". A new run "
        "takes the dataset's language (datasets/<voice>/report.json) unless another is chosen.",
    )
    evaluate: bool = _f(
        True,
        "Score every saved checkpoint in a separate process: intelligibility (WER/CER with Whisper) and "
        "speaker similarity (SECS), against the base model's scores on the same sentences; the best is kept.",
    )
    eval_sentences: list[str] = _f(
        [],
        "Held-out sentences every checkpoint speaks to be scored, one per line, none from the training text. "
        "A new run gets 8 in its language (short, long, questions, numbers); empty: those defaults.",
    )
    eval_seed: int = _f(
        1234,
        "Sampling seed of the first evaluation sentence (the next ones seed+1, ...), the same for every "
        "checkpoint and the base model.",
    )
    eval_backend: str = _f(
        "",
        "Whisper backend that transcribes the evaluation speech (faster-whisper or openai-whisper); "
        "empty: the one the voice's dataset was prepared with.",
    )
    eval_whisper_model: str = _f(
        "",
        "Whisper model (a name or a local path) that transcribes the evaluation speech; empty: the "
        "voice's dataset model.",
    )

    def __post_init__(self) -> None:
        def need(cond: bool, name: str, why: str) -> None:
            if not cond:
                raise ConfigError(f"{name}: {why} (got {getattr(self, name)!r})")

        self._check_types()

        for name in ("voice", "run"):
            if getattr(self, name):
                try:
                    paths.check_name(getattr(self, name), name)
                except paths.InvalidNameError as exc:
                    raise ConfigError(str(exc)) from None
        need(
            isinstance(self.epochs, int) and self.epochs >= 1,
            "epochs",
            "must be a whole number of at least 1",
        )
        need(self.learning_rate > 0, "learning_rate", "must be positive")
        need(self.weight_decay >= 0, "weight_decay", "must not be negative")
        need(self.text_loss_weight >= 0, "text_loss_weight", "must not be negative")
        need(self.mel_loss_weight >= 0, "mel_loss_weight", "must not be negative")
        need(
            self.text_loss_weight + self.mel_loss_weight > 0,
            "mel_loss_weight",
            "one loss weight must be positive",
        )
        need(
            self.milestones == sorted(set(self.milestones)),
            "milestones",
            "must be increasing",
        )
        need(
            all(1 <= m < self.epochs for m in self.milestones),
            "milestones",
            f"must lie within 1..{self.epochs - 1} (the epochs)",
        )
        need(0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        need(
            isinstance(self.batch_size, int) and self.batch_size >= 1,
            "batch_size",
            "must be at least 1",
        )
        need(
            isinstance(self.gradient_accumulation, int) and self.gradient_accumulation >= 1,
            "gradient_accumulation",
            "must be at least 1",
        )
        if isinstance(self.gpus, list):
            need(
                len(self.gpus) >= 1 and all(isinstance(g, int) and g >= 0 for g in self.gpus),
                "gpus",
                "must list device ids",
            )
        else:
            need(
                isinstance(self.gpus, int) and self.gpus >= 0,
                "gpus",
                "must be a count or a list of device ids",
            )
        unit = self.gradient_accumulation * self.world_size()
        nearest = sorted({max(unit, self.batch_size // unit * unit), (self.batch_size // unit + 1) * unit})
        need(
            self.batch_size % unit == 0,
            "batch_size",
            f"must be divisible by gradient_accumulation x GPUs = {unit}: try {' or '.join(map(str, nearest))}",
        )
        need(self.validate_every >= 0, "validate_every", "must not be negative")
        need(self.save_every >= 1, "save_every", "must be at least 1")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", "must be at least 1")
        need(self.max_steps >= 0, "max_steps", "must not be negative")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        need(
            self.precision in PRECISIONS,
            "precision",
            f"must be one of {', '.join(PRECISIONS)}",
        )
        need(self.family in FAMILIES, "family", f"must be one of {', '.join(FAMILIES)}")
        groups = FREEZE_GROUPS_BY_FAMILY[self.family]
        unknown = sorted(set(self.freeze) - set(groups))
        need(
            not unknown,
            "freeze",
            f"unknown groups {unknown} for family {self.family}; known: {', '.join(groups)}",
        )
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}")
        need(0 <= self.warmup_fraction < 1, "warmup_fraction", "must be in [0, 1)")
        need(self.warmup_min_updates >= 0, "warmup_min_updates", "must not be negative")
        need(self.batch_frames >= 0, "batch_frames", "must not be negative (0: batches count clips)")
        need(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1) (0: no EMA)")
        need(self.max_grad_norm >= 0, "max_grad_norm", "must not be negative")
        need(
            0 < self.min_audio_seconds < self.max_audio_seconds,
            "max_audio_seconds",
            "must exceed min_audio_seconds",
        )
        need(self.num_workers >= 0, "num_workers", "must not be negative")
        need(self.min_training_clips >= 1, "min_training_clips", "must be at least 1")
        suggestion = languages.to_xtts(self.language) if self.language not in languages.CODES else None
        need(
            self.language in languages.CODES,
            "language",
            "must be one of the languages XTTS-v2 speaks: "
            + ", ".join(languages.CODES)
            + (f"; for {languages.LANGUAGES[suggestion]} use {suggestion!r}" if suggestion else ""),
        )

        if self.eval_sentences:
            from engine.eval_sentences import check_sentences

            try:
                self.eval_sentences = check_sentences(self.eval_sentences)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        need(
            self.eval_backend in ("", "faster-whisper", "openai-whisper"),
            "eval_backend",
            "must be faster-whisper, openai-whisper or empty (the voice's)",
        )

    def _check_types(self) -> None:
        """Raise ConfigError naming the first field whose value has the wrong type: an int field
        takes whole numbers only (``1.5``, ``"2"`` and ``true`` are refused), a float field any
        finite number (``.inf`` and ``.nan`` are refused; an int becomes a float), a str field
        text, a list field a list of those. Runs first, so the range checks compare numbers."""
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            check, why = _TYPE_CHECKS[spec.type]
            if not check(value):
                raise ConfigError(f"{spec.name}: {why} (got {value!r})")
            if spec.type == "float":
                setattr(self, spec.name, float(value))

    # Derived numbers are methods, not stored fields.
    def world_size(self) -> int:
        """Processes (one per GPU) the run uses: 1 on CPU or one GPU."""
        return len(self.gpus) if isinstance(self.gpus, list) else max(1, self.gpus)

    def micro_batch_size(self) -> int:
        """Clips per forward pass on each process: batch_size / (gradient_accumulation x world size)."""
        return self.batch_size // (self.gradient_accumulation * self.world_size())

    def base_model_dir(self) -> Path:
        """The base-model folder: ``base_model`` or models/xtts-v2/."""
        return Path(self.base_model).expanduser() if self.base_model else paths.default_base_model_dir()

    def run_dir(self) -> Path:
        return paths.run_dir(self.voice, self.run)

    def dataset_dir(self) -> Path:
        return paths.dataset_dir(self.voice)

    def to_yaml(self) -> str:
        return yaml.safe_dump(asdict(self), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> TrainConfig:
        """Build from a mapping; raises ConfigError naming ``source`` for unknown keys or bad values."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read ``train.yaml``. Raises ConfigError (bad YAML, unknown keys, bad values) or FileNotFoundError."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_dict(data or {}, source=str(path))

    def save_new(self) -> Path:
        """Write ``training/<voice>/<run>/train.yaml``; refuses (FileExistsError) if that run exists."""
        if not self.voice or not self.run:
            raise ConfigError("voice and run must be set to write a run")
        target = self.run_dir() / "train.yaml"
        if target.exists():
            raise FileExistsError(f"run {self.run!r} of voice {self.voice!r} already exists: {target}")
        write_text_atomic(target, self.to_yaml())
        return target


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


#: Field type (as written in the class, a string under ``from __future__ import annotations``)
#: → (check, what the message says the value must be).
_TYPE_CHECKS = {
    "int": (_is_int, "must be a whole number"),
    "float": (_is_finite, "must be a finite number"),
    "str": (lambda v: isinstance(v, str), "must be text"),
    "bool": (lambda v: isinstance(v, bool), "must be true or false"),
    "list[int]": (lambda v: isinstance(v, list) and all(map(_is_int, v)), "must be a list of whole numbers"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "must be a list of names"),
    "int | list[int]": (
        lambda v: _is_int(v) or (isinstance(v, list) and all(map(_is_int, v))),
        "must be a whole number or a list of whole numbers",
    ),
}

for _field in dataclasses.fields(TrainConfig):
    FIELD_HELP[_field.name] = _field.metadata.get("help", "")


def new_run_config(voice: str, run: str, **values) -> TrainConfig:
    """The TrainConfig of a new run of ``voice``: ``values`` (TrainConfig fields) as given;
    ``family``, when not given, read from the base-model folder (engine.models.family_of), with
    that family's recipe (``ModelFamily.config_defaults``) for the fields not given; and
    ``language``, when not given (or empty), the dataset's language read from
    ``datasets/<voice>/report.json`` (:func:`engine.languages.default_language`; ``"en"`` when
    the dataset records none). An explicit ``language`` wins. ``eval_sentences``, when not
    given, are the language's defaults (:func:`engine.eval_sentences.default_sentences`)
    without those in the dataset's text.

    Raises ConfigError naming the field: a bad value, or a dataset in a language XTTS-v2 cannot
    speak (then ``--language`` / the form chooses one).
    """
    if not values.get("family"):
        from engine.models import family_of

        base = Path(values["base_model"]) if values.get("base_model") else paths.default_base_model_dir()
        values["family"] = family_of(base)
    if values["family"] in FAMILIES:
        from engine.models import get_family

        # The family's recipe (e.g. F5-TTS: lr 1e-5, warm-up, frames per batch) for what is not given.
        values = {**get_family(values["family"]).config_defaults, **values}
    if not values.get("language"):
        try:
            values["language"] = languages.default_language(voice)
        except languages.LanguageError as exc:
            raise ConfigError(f"{exc}; choose the language explicitly") from None
    from engine.eval_sentences import SENTENCES, default_sentences

    # The held-out sentences of the run's language, none from the training text (an unknown
    # language is left to TrainConfig, whose message names the field).
    if not values.get("eval_sentences") and values["language"] in SENTENCES:
        texts = [text for _, text in dataset_texts(paths.dataset_dir(voice))]
        values["eval_sentences"] = default_sentences(values["language"], exclude=texts)
    return TrainConfig(voice=voice, run=run, **values)


def dataset_texts(dataset_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """``(audio_file, text)`` of every line of a dataset folder's train.csv and validation.csv
    (coqui format, ``|``-separated, header first); a missing or unreadable file gives none."""
    rows = []
    for name in ("train.csv", "validation.csv"):
        try:
            lines = (Path(dataset_dir) / name).read_text(encoding="utf-8").splitlines()[1:]
        except (OSError, UnicodeDecodeError):
            continue
        rows += [(parts[0], parts[1]) for parts in (line.split("|") for line in lines) if len(parts) >= 2]
    return rows


def count_dataset_clips(dataset_dir: str | os.PathLike) -> tuple[int, int]:
    """(training clips, validation clips) listed in a dataset folder's train.csv and
    validation.csv: the non-empty lines after the header; a missing file counts 0."""
    counts = []
    for name in ("train.csv", "validation.csv"):
        try:
            lines = Path(dataset_dir, name).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        counts.append(sum(1 for line in lines[1:] if line.strip()))
    return counts[0], counts[1]


def check_against_dataset(config: TrainConfig, n_train_clips: int, n_validation_clips: int) -> list[str]:
    """Warnings about ``config`` for a dataset of ``n_train_clips`` / ``n_validation_clips``
    clips: settings that are valid (``__post_init__`` refuses the invalid ones) but probably
    not what the user wants. Each warning is one plain sentence naming the field; [] when all
    looks sensible.

    Steps per epoch are ``ceil(n_train_clips / batch_size)`` (engine.training.loop), and a batch
    larger than the dataset repeats clips within the step (engine.training.data.epoch_batches).
    """
    warnings = []
    steps_per_epoch = math.ceil(n_train_clips / config.batch_size) if n_train_clips else 0
    if n_train_clips == 0:
        warnings.append("The dataset has no training clips yet: build it in the Dataset tab first.")
    elif config.batch_size > n_train_clips:
        warnings.append(
            f"batch_size {config.batch_size} is larger than the {n_train_clips} training clips: each step "
            f"repeats clips. Use at most {n_train_clips}."
        )
    elif steps_per_epoch < 4:
        warnings.append(
            f"Only {steps_per_epoch} optimizer step(s) per epoch ({n_train_clips} clips / batch_size "
            f"{config.batch_size}): the curves will have few points per epoch; a smaller batch_size gives more."
        )
    if 0 < n_train_clips < config.min_training_clips:
        warnings.append(
            f"The dataset has only {n_train_clips} training clip(s); training refuses to start with fewer than "
            f"min_training_clips = {config.min_training_clips}. Add recordings in the Dataset tab."
        )
    if n_validation_clips == 0:
        warnings.append(
            "No validation clips: over-fitting cannot be seen and no best-by-validation checkpoint is kept "
            "(rebuild the dataset with a validation fraction above 0)."
        )
    elif config.validate_every == 0:
        warnings.append("validate_every is 0: validation never runs, so over-fitting cannot be seen.")
    elif config.validate_every > config.epochs:
        warnings.append(
            f"validate_every {config.validate_every} is more than the {config.epochs} epochs: validation never runs."
        )
    if config.save_every > config.epochs:
        warnings.append(
            f"save_every {config.save_every} is more than the {config.epochs} epochs: only the final checkpoint "
            "is saved, so a stop or crash loses the whole run."
        )
    if config.milestones and config.gamma == 1:
        warnings.append("milestones are set but gamma is 1: the learning rate never changes.")
    if config.max_steps and steps_per_epoch and config.max_steps < steps_per_epoch:
        warnings.append(
            f"max_steps {config.max_steps} ends the run before the first epoch ends ({steps_per_epoch} steps): "
            "no validation or epoch checkpoint before the final save."
        )
    if config.learning_rate > 1e-4:
        warnings.append(
            f"learning_rate {config.learning_rate:g} is {config.learning_rate / 5e-6:.0f}x coqui's recipe (5e-6): "
            "expect loss spikes and a voice that drifts."
        )
    return warnings
