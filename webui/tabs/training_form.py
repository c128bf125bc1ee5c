"""Training tab, part 1: the configuration form, its YAML preview and its checks.

The form is generated from ``TrainConfig``: one component per field (defaults from the
dataclass, help text from ``FIELD_HELP``), grouped in :data:`SECTIONS`. The evaluation
sentences are one per line; a voice's language fills in its defaults
(:func:`engine.eval_sentences.default_sentences`, none from the dataset's text) while the box
still holds stock sentences, never over the user's own. :func:`form_to_config`
builds the dataclass from the form's values; its ``__post_init__`` refuses invalid values and
:func:`engine.config.check_against_dataset` warns about valid but doubtful ones. The batch
suggestion comes from :mod:`engine.hardware` (the GPU memory found, or none).
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path

import gradio as gr

from engine import eval_sentences, hardware, languages, paths
from engine.config import (
    FIELD_HELP,
    FREEZE_GROUPS_BY_FAMILY,
    LR_SCHEDULES,
    OPTIMIZERS,
    PRECISIONS,
    ConfigError,
    TrainConfig,
    check_against_dataset,
    count_dataset_clips,
    dataset_texts,
)
from engine.training import memory as training_memory
from webui.tabs import TabContext

#: Form layout: (section title, fields, open). Fields not named here land in "Other".
SECTIONS = (
    ("Model", ("family", "base_model", "init_weights"), True),
    (
        "Schedule",
        (
            "epochs",
            "max_steps",
            "learning_rate",
            "lr_schedule",
            "warmup_fraction",
            "warmup_min_updates",
            "milestones",
            "gamma",
            "weight_decay",
        ),
        True,
    ),
    (
        "Batch and hardware",
        ("batch_size", "batch_frames", "gradient_accumulation", "gpus", "precision", "num_workers"),
        True,
    ),
    ("Speed and memory", ("optimizer", "gradient_checkpointing", "tf32"), False),
    ("Losses", ("text_loss_weight", "mel_loss_weight", "max_grad_norm", "ema_decay", "freeze"), False),
    ("Validation and checkpoints", ("validate_every", "save_every", "keep_checkpoints"), False),
    ("Data", ("language", "max_text_tokens", "min_audio_seconds", "max_audio_seconds", "seed"), False),
    ("Checkpoint evaluation", ("evaluate", "eval_seed", "eval_backend", "eval_whisper_model", "eval_sentences"), True),
)
#: Fields set by the voice and run selectors above the form.
SELECTOR_FIELDS = ("voice", "run")
LABELS = {
    "gpus": "GPUs", "max_steps": "Max steps", "init_weights": "Start from weights",
    "evaluate": "Evaluate checkpoints", "eval_sentences": "Evaluation sentences", "eval_seed": "Evaluation seed",
    "eval_backend": "Evaluation Whisper backend", "eval_whisper_model": "Evaluation Whisper model",
    "tf32": "TF32 matmuls", "gradient_checkpointing": "Gradient checkpointing", "family": "Model family",
    "lr_schedule": "Learning-rate schedule", "batch_frames": "Batch frames (per GPU)", "ema_decay": "EMA decay",
}  # fmt: skip
#: The family choices (label, value).
FAMILY_CHOICES = [("XTTS-v2", "xtts"), ("F5-TTS v1", "f5")]
#: Fields only one family reads: hidden in the form for the other.
FAMILY_ONLY = {"text_loss_weight": "xtts", "mel_loss_weight": "xtts", "max_text_tokens": "xtts"}
#: Fields given a section's full width, under its other fields.
WIDE_FIELDS = ("eval_sentences",)
#: Whisper backends of the evaluation ("" = the one the voice's dataset was prepared with).
EVAL_BACKENDS = [("the dataset's", ""), ("faster-whisper", "faster-whisper"), ("openai-whisper", "openai-whisper")]
_SENTENCE_ITEM = re.compile(r"^eval_sentences\[(\d+)\]")


def form_fields() -> list[dataclasses.Field]:
    """The TrainConfig fields the form edits (all but voice and run)."""
    return [f for f in dataclasses.fields(TrainConfig) if f.name not in SELECTOR_FIELDS]


def sections() -> list[tuple[str, list[str], bool]]:
    """:data:`SECTIONS` plus an "Other" section for fields it does not name."""
    known = {name for _, names, _ in SECTIONS for name in names}
    present = {f.name for f in form_fields()}
    out = [(title, [n for n in names if n in present], is_open) for title, names, is_open in SECTIONS]
    other = [f.name for f in form_fields() if f.name not in known]
    return out + ([("Other", other, False)] if other else [])


def _hint(name: str):
    return typing.get_type_hints(TrainConfig)[name]


def to_form_value(name: str, value):
    """A TrainConfig value as its form component shows it (lists become comma-separated text,
    the evaluation sentences one per line)."""
    if name == "freeze":
        return list(value)
    if name == "eval_sentences":
        return "\n".join(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return value


def _parse(name: str, value):
    hint = _hint(name)
    if name == "freeze":
        return list(value or [])
    if hint is bool:
        return bool(value)
    if name == "eval_sentences":
        return sentence_lines(value)
    if hint in (int, float):
        if value is None or value == "":
            raise ConfigError(f"{name}: required")
        number = float(value)
        if hint is int:
            if not number.is_integer():
                raise ConfigError(f"{name}: must be a whole number (got {value!r})")
            return int(number)
        return number
    if hint is str:
        return (value or "").strip()
    # list[int] or int | list[int], typed as text: "1" or "0, 1"
    text = str(value or "").strip().strip("[]")
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        numbers = [int(item) for item in items]
    except ValueError:
        raise ConfigError(f"{name}: expected whole numbers separated by commas (got {value!r})") from None
    if typing.get_origin(hint) is list:
        return numbers
    return numbers[0] if len(numbers) == 1 and "," not in text else numbers


def sentence_lines(text) -> list[str]:
    """The evaluation sentences of the text box: one per non-blank line, stripped."""
    return [line.strip() for line in str(text or "").splitlines() if line.strip()]


def form_to_config(form: dict, voice: str | None, run: str | None) -> TrainConfig:
    """Build the TrainConfig of the form's values; raises ConfigError naming the bad field
    (for an evaluation sentence, also its line in the box)."""
    values = {f.name: _parse(f.name, form[f.name]) for f in form_fields() if f.name in form}
    try:
        return TrainConfig(voice=(voice or "").strip(), run=(run or "").strip(), **values)
    except ConfigError as exc:
        item = _SENTENCE_ITEM.match(str(exc))
        if item is None:
            raise
        numbers = [n for n, line in enumerate(str(form.get("eval_sentences") or "").splitlines(), 1) if line.strip()]
        line = numbers[int(item.group(1))] if int(item.group(1)) < len(numbers) else None
        raise ConfigError(f"{exc} (line {line} of the evaluation sentences)" if line else str(exc)) from None


def default_eval_sentences(voice: str | None, language: str | None) -> str:
    """The default evaluation sentences of ``language`` none of which is in ``voice``'s dataset
    text, one per line ("" for a language without sentences)."""
    try:
        texts = [text for _, text in dataset_texts(paths.dataset_dir(voice))] if voice else []
    except paths.InvalidNameError:
        texts = []
    try:
        return "\n".join(eval_sentences.default_sentences(language or languages.DEFAULT_LANGUAGE, exclude=texts))
    except ValueError:
        return ""


def stock_sentences(text) -> bool:
    """Whether the box holds no sentence of the user's own: empty, or only built-in sentences
    (of any language), so a new voice or language may replace them with its defaults."""
    stock = {sentence for sentences in eval_sentences.SENTENCES.values() for sentence in sentences}
    return all(line in stock for line in sentence_lines(text))


def yaml_preview(form: dict, voice: str | None, run: str | None) -> str:
    """The train.yaml the form would write, or the ConfigError as a YAML comment."""
    try:
        return form_to_config(form, voice, run).to_yaml()
    except (ConfigError, TypeError, ValueError) as exc:
        return f"# Not a valid configuration:\n# {exc}\n"


def dataset_counts(voice: str | None) -> tuple[int, int] | None:
    """(training clips, validation clips) of the voice's dataset, None for no or a bad voice name."""
    try:
        return count_dataset_clips(paths.dataset_dir(voice or ""))
    except paths.InvalidNameError:
        return None


def default_language(voice: str | None) -> str:
    """The language a new run of ``voice`` starts with: its dataset's language (report.json,
    :func:`engine.languages.dataset_language`), else ``"en"``."""
    return languages.dataset_language(voice) or languages.DEFAULT_LANGUAGE


def language_check(config: TrainConfig) -> str | None:
    """A warning when the run's language is not the one its dataset records, else None."""
    recorded = languages.recorded_language(config.voice)
    if recorded is None or languages.to_xtts(recorded) == config.language:
        return None
    code = languages.to_xtts(recorded)
    dataset = languages.label(code) if code else f"{recorded!r}, which XTTS-v2 cannot speak"
    return (
        f"The dataset is in {dataset} (its report.json), but language is {languages.label(config.language)}: "
        "the transcripts would be read as the wrong language."
    )


def config_checks(form: dict, voice: str | None, run: str | None, existing: bool = False) -> str:
    """Markdown for the box under the YAML: the error that makes the form invalid, or the
    warnings of :func:`engine.config.check_against_dataset`, or "Checks passed"."""
    try:
        config = form_to_config(form, voice, run)
    except (ConfigError, TypeError, ValueError) as exc:
        return f"**Not valid:** {exc}"
    lines = []
    if existing:
        lines.append(
            "This run exists: **Resume** keeps its own train.yaml. To train with other settings, start "
            "a new run (a new name) or a new run from its weights."
        )
    elif config.init_weights:
        lines.append(f"This new run starts from the weights in `{config.init_weights}`, not from the base model.")
    counts = dataset_counts(voice)
    if counts is None:
        return "\n\n".join(lines) or "Choose a voice."
    n_train, n_validation = counts
    warnings = check_against_dataset(config, n_train, n_validation)
    warnings += [w for w in (language_check(config),) if w]
    lines.append(f"Dataset: {n_train} training and {n_validation} validation clips.")
    lines += [f"⚠ {w}" for w in warnings] or ["✓ Checks passed."]
    return "\n\n".join(lines)


def detected_family(base_model: str | None, current: str) -> str:
    """The family of the base-model folder typed in the form (engine.models.family_of), or
    ``current`` while the text names no model folder of either family."""
    from engine import models

    folder = paths.home() / base_model if base_model and not os.path.isabs(base_model) else base_model
    if not folder or not os.path.isdir(folder):
        return current
    family = models.family_of(folder)
    return family if not models.get_family(family).missing_files(Path(folder)) else current


def family_recipe(family: str) -> dict:
    """The form values a new run of ``family`` starts from: TrainConfig's defaults with the
    family's recipe (``ModelFamily.config_defaults``) over them, for the fields the recipes set."""
    from engine import models

    names = {name for f in models.FAMILIES for name in models.get_family(f).config_defaults}
    recipe = models.get_family(family).config_defaults
    return {name: to_form_value(name, recipe.get(name, getattr(TrainConfig(), name))) for name in sorted(names)}


def family_view(family: str, freeze: list | None) -> dict:
    """Component updates for ``family``: the freeze groups it has (the ticked ones it knows kept)
    and the fields only the other family reads hidden."""
    groups = list(FREEZE_GROUPS_BY_FAMILY.get(family, ()))
    updates = {"freeze": gr.CheckboxGroup(choices=groups, value=[g for g in freeze or [] if g in groups])}
    updates |= {name: gr.update(visible=owner == family) for name, owner in FAMILY_ONLY.items()}
    return updates


def batch_suggestion(form: dict, voice: str | None, gpus: list[hardware.GpuMemory]) -> hardware.BatchSuggestion:
    """The batch suggestion for the GPUs found and the voice's training clips (engine.hardware)."""
    counts = dataset_counts(voice) or (0, 0)
    precision = form.get("precision") if form.get("precision") in PRECISIONS else "fp32"
    measured = None
    if gpus:  # what an earlier run measured on this GPU model with these settings, if any
        model_dir = form.get("base_model") or paths.default_base_model_dir()
        optimizer = form.get("optimizer") if form.get("optimizer") in OPTIMIZERS else "adamw"
        measured = training_memory.lookup(min(gpus, key=lambda g: g.free_bytes).name, model_dir, precision,
                                          optimizer, bool(form.get("gradient_checkpointing")))  # fmt: skip
    if form.get("family") == "f5":  # F5-TTS counts its batches in mel frames
        max_seconds = float(form.get("max_audio_seconds") or 30.0)
        return hardware.suggest_frames(gpus, precision, measured, max_seconds)
    return hardware.suggest_batch(gpus, counts[0], precision, measured)


def field_component(field: dataclasses.Field, ctx: TabContext):
    """The form component of one TrainConfig field, its help text from FIELD_HELP."""
    name, hint = field.name, _hint(field.name)
    default = to_form_value(name, getattr(TrainConfig(), name))
    common = {"label": LABELS.get(name, name.replace("_", " ").capitalize()), "info": FIELD_HELP.get(name) or None}
    common["elem_id"] = f"train-{name.replace('_', '-')}"
    common["min_width"] = 200
    if name == "family":
        return gr.Dropdown(FAMILY_CHOICES, value=default, **common)
    if name == "lr_schedule":
        return gr.Dropdown(list(LR_SCHEDULES), value=default, **common)
    if name == "precision":
        return gr.Dropdown(list(PRECISIONS), value=default, **common)
    if name == "optimizer":
        return gr.Dropdown(list(OPTIMIZERS), value=default, **common)
    if hint is bool:
        with gr.Column(min_width=260):  # a bare checkbox in a row of fields shrinks to its box
            return gr.Checkbox(value=default, **common)
    if name == "eval_backend":
        return gr.Dropdown(EVAL_BACKENDS, value=default, **common)
    if name == "eval_sentences":
        common["info"] = f"{common['info']} One sentence per line."
        return gr.Textbox(value=default, lines=8, max_lines=20, **common)
    if name == "freeze":
        return gr.CheckboxGroup(list(FREEZE_GROUPS_BY_FAMILY["xtts"]), value=default, **common)
    if name == "language":
        return gr.Dropdown(languages.choices(), value=default, **common)
    if name == "base_model":
        return gr.Textbox(value=lambda: ctx.settings.base_model, placeholder="models/xtts-v2/", **common)
    if hint in (int, float):
        return gr.Number(value=default, precision=0 if hint is int else None, **common)
    return gr.Textbox(value=default, **common)


def build_form(ctx: TabContext, ui: dict) -> None:
    """The form (accordions of fields) beside the YAML preview, the checks and the batch
    suggestion; adds its components to ``ui`` (fields under ``ui["form"]``)."""
    with gr.Row():
        with gr.Column(scale=3):
            for title, names, is_open in sections():
                with gr.Accordion(title, open=is_open):
                    with gr.Row():
                        for field in form_fields():
                            if field.name in names and field.name not in WIDE_FIELDS:
                                ui["form"][field.name] = field_component(field, ctx)
                    for field in form_fields():  # under the row, the section's full width
                        if field.name in names and field.name in WIDE_FIELDS:
                            ui["form"][field.name] = field_component(field, ctx)
        with gr.Column(scale=2):
            ui["yaml"] = gr.Code(
                language="yaml", label="train.yaml", interactive=False, max_lines=30, elem_id="training-yaml"
            )
            ui["checks"] = gr.Markdown(elem_id="training-checks")
            with gr.Group():
                ui["suggestion"] = gr.Markdown(elem_id="training-suggestion")
                ui["apply_suggestion"] = gr.Button(
                    "Use the suggested batch", size="sm", elem_id="training-apply-suggestion"
                )
