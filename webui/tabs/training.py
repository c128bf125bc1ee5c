"""Training tab: a form for ``TrainConfig``, its YAML preview, start/stop, and live monitoring.

The form is generated from the dataclass: one field per ``TrainConfig`` field (defaults from
the dataclass, help text from ``FIELD_HELP``), grouped in :data:`SECTIONS`. Start writes
``train.yaml`` with ``TrainConfig.save_new()`` and starts the trainer subprocess; on an
existing run it resumes (the trainer picks its newest complete checkpoint). A ``gr.Timer``
tails ``metrics.jsonl`` from an offset kept in ``gr.State``, so a page refresh re-reads from
0 and reattaches to a running trainer.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import gradio as gr
import pandas as pd

from engine import paths, runs
from engine.config import FIELD_HELP, FREEZE_GROUPS, PRECISIONS, ConfigError, TrainConfig
from engine.models import LANGUAGES
from engine.training import process
from webui.tabs import TabContext, engine_errors, named, pick, voice_choices

#: Form layout: (section title, fields, open). Fields not named here land in "Other".
SECTIONS = (
    ("Schedule", ("epochs", "max_steps", "learning_rate", "milestones", "gamma", "weight_decay"), True),
    ("Batch and hardware", ("batch_size", "gradient_accumulation", "gpus", "precision", "num_workers"), True),
    ("Losses", ("text_loss_weight", "mel_loss_weight", "max_grad_norm", "freeze"), False),
    ("Validation and checkpoints", ("validate_every", "save_every", "keep_checkpoints"), False),
    ("Data", ("language", "max_text_tokens", "min_audio_seconds", "max_audio_seconds", "seed"), False),
    ("Model", ("base_model", "init_weights"), False),
)
#: Fields set by the voice and run selectors above the form.
SELECTOR_FIELDS = ("voice", "run")
TICK_SECONDS = 1.5
MAX_PLOT_POINTS = 2000
LOG_LINES = 12
PLOT_COLUMNS = ["step", "value", "series"]


# --- the form <-> TrainConfig ----------------------------------------------------------------


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
    """A TrainConfig value as its form component shows it (lists become comma-separated text)."""
    if name == "freeze":
        return list(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return value


def _parse(name: str, value):
    hint = _hint(name)
    if name == "freeze":
        return list(value or [])
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


def form_to_config(form: dict, voice: str | None, run: str | None) -> TrainConfig:
    """Build the TrainConfig of the form's values; raises ConfigError naming the bad field."""
    values = {f.name: _parse(f.name, form[f.name]) for f in form_fields() if f.name in form}
    return TrainConfig(voice=(voice or "").strip(), run=(run or "").strip(), **values)


def yaml_preview(form: dict, voice: str | None, run: str | None) -> str:
    """The train.yaml the form would write, or the ConfigError as a YAML comment."""
    try:
        return form_to_config(form, voice, run).to_yaml()
    except (ConfigError, TypeError, ValueError) as exc:
        return f"# Not a valid configuration:\n# {exc}\n"


# --- runs ------------------------------------------------------------------------------------


def suggest_run_name(voice: str | None) -> str:
    """``run-N`` with the first N not taken by a run of ``voice``."""
    taken = set(paths.list_runs(voice)) if voice else set()
    return next(f"run-{n}" for n in range(1, 10_000) if f"run-{n}" not in taken)


def start_run(form: dict, voice: str, run: str, base_model: str = "") -> tuple[Path, bool]:
    """Start (new run) or resume (existing run) training; returns (run folder, resumed).

    A new run's train.yaml is written from the form (an empty base-model field takes
    ``base_model``); an existing run keeps its own train.yaml. Raises ConfigError,
    InvalidNameError, FileNotFoundError (no dataset) or the trainer's start errors.
    """
    voice, run = paths.check_name(voice or "", "voice name"), paths.check_name(run or "", "run name")
    yaml_path = paths.run_dir(voice, run) / "train.yaml"
    resumed = yaml_path.is_file()
    if not resumed:
        config = form_to_config(form, voice, run)
        if not config.base_model and base_model:
            config = dataclasses.replace(config, base_model=base_model)
        if not (config.dataset_dir() / "train.csv").is_file():
            raise FileNotFoundError(f"voice {voice!r} has no dataset yet: transcribe it in the Dataset tab")
        yaml_path = config.save_new()
    process.start_training(yaml_path)
    return yaml_path.parent, resumed


def new_tail(voice: str | None = None, run: str | None = None) -> dict:
    """The metrics-tail state: which run, the byte offset read so far, the rows read."""
    return {"key": f"{voice}/{run}", "offset": 0, "rows": []}


def existing_run(voice: str | None, run: str | None) -> Path | None:
    """The run folder of a run that has a train.yaml; None for a new, empty or invalid name."""
    try:
        folder = paths.run_dir(voice or "", run or "")
    except paths.InvalidNameError:
        return None
    return folder if (folder / "train.yaml").is_file() else None


def tail_metrics(tail: dict, voice: str | None, run: str | None) -> tuple[dict, bool]:
    """Read the new rows of the run's metrics.jsonl; returns (state, whether rows arrived)."""
    if not tail or tail.get("key") != f"{voice}/{run}":
        tail = new_tail(voice, run)
    run_folder = existing_run(voice, run)
    if run_folder is None or not (run_folder / "metrics.jsonl").is_file():
        return tail, False
    rows, offset = runs.read_metrics(run_folder, tail["offset"])
    rows = [r for r in rows if "event" not in r and "step" in r]
    return {**tail, "offset": offset, "rows": tail["rows"] + rows}, bool(rows)


def plot_frame(rows: list) -> pd.DataFrame | None:
    """A (step, value, split) frame for a LinePlot; None when there are no rows.

    Never an empty frame: Gradio 6.31's LinePlot, once given an empty frame, draws no lines
    for the data that follows (checked in Chromium). For the same reason a plot's series must
    all be present in its first frame (later ones are not drawn), so train and validation
    curves are separate plots: validation rows carry text and mel CE together.
    """
    if not rows:
        return None
    stride = max(1, len(rows) // MAX_PLOT_POINTS)
    frame = pd.DataFrame(rows[::stride], columns=PLOT_COLUMNS)
    return frame.astype({"step": "int64", "value": "float64", "series": "str"})


def loss_frames(rows: list[dict]) -> tuple[pd.DataFrame | None, ...]:
    """(train text CE, train mel CE, validation text and mel CE) against step (None: no data)."""

    def values(split: str, key: str, series: str) -> list:
        return [[r["step"], r[key], series] for r in rows if r.get("split") == split and r.get(key) is not None]

    validation = sorted(
        values("validation", "loss_text_ce", "text CE") + values("validation", "loss_mel_ce", "mel CE"),
        key=lambda row: row[0],
    )
    return (
        plot_frame(values("train", "loss_text_ce", "text CE")),
        plot_frame(values("train", "loss_mel_ce", "mel CE")),
        plot_frame(validation),
    )


def _clock(seconds) -> str:
    seconds = int(seconds or 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def describe_status(status) -> str:
    """One markdown line from a RunStatus."""
    parts = [f"**{status.state}**"]
    if status.total_steps:
        parts.append(f"step {status.step} / {status.total_steps}")
    elif status.step:
        parts.append(f"step {status.step}")
    if status.epoch:
        parts.append(f"epoch {status.epoch}")
    if status.state == "running" and status.eta_seconds:
        parts.append(f"ETA {_clock(status.eta_seconds)}")
    if status.latest_checkpoint is not None:
        parts.append(f"latest checkpoint {runs.checkpoint_name(status.latest_checkpoint)}")
    line = " · ".join(parts)
    if status.message:
        line += f"  \n{status.message}"
    if status.hint:
        line += f"  \n*Hint:* {status.hint}"
    return line


def monitor(voice: str | None, run: str | None) -> tuple[str, str, bool]:
    """(status markdown, log tail, whether the trainer is running) of the watched run."""
    if not voice or not run:
        return "Choose a voice and a run.", "", False
    run_folder = existing_run(voice, run)
    if run_folder is None:
        try:
            paths.check_name(run, "run name")
        except paths.InvalidNameError as exc:
            return f"**invalid run name**: {exc}", "", False
        return f"**new run** `{run}`: press Start to write its train.yaml and train.", "", False
    status = runs.run_status(voice, run)
    return describe_status(status), runs.log_tail(run_folder, LOG_LINES), status.state == "running"


def find_running_run() -> tuple[str, str] | None:
    """The first (voice, run) whose trainer is running, to reattach to after a page refresh."""
    for voice in paths.list_voices():
        for run in paths.list_runs(voice):
            if process.running_pid(paths.run_dir(voice, run)) is not None:
                return voice, run
    return None


# --- layout and wiring -----------------------------------------------------------------------

LABELS = {"gpus": "GPUs", "max_steps": "Max steps", "init_weights": "Start from weights"}
COLORS = {"text CE": "#2563eb", "mel CE": "#ea580c"}


def _field_component(field: dataclasses.Field, ctx: TabContext):
    name, hint = field.name, _hint(field.name)
    default = to_form_value(name, getattr(TrainConfig(), name))
    common = {"label": LABELS.get(name, name.replace("_", " ").capitalize()), "info": FIELD_HELP.get(name) or None}
    common["elem_id"] = f"train-{name.replace('_', '-')}"
    common["min_width"] = 200
    if name == "precision":
        return gr.Dropdown(list(PRECISIONS), value=default, **common)
    if name == "freeze":
        return gr.CheckboxGroup(list(FREEZE_GROUPS), value=default, **common)
    if name == "language":
        return gr.Dropdown(list(LANGUAGES), value=default, allow_custom_value=True, **common)
    if name == "base_model":
        return gr.Textbox(value=lambda: ctx.settings.base_model, placeholder="models/xtts-v2/", **common)
    if hint in (int, float):
        return gr.Number(value=default, precision=0 if hint is int else None, **common)
    return gr.Textbox(value=default, **common)


def build(ctx: TabContext) -> dict:
    """The Training tab; returns its components by name (form fields under ``ui["form"]``)."""
    ui: dict = {"form": {}}
    with gr.Tab("Training", id="training", elem_id="tab-training") as ui["tab"]:
        with gr.Row(equal_height=True):
            ui["voice"] = gr.Dropdown(label="Voice", choices=[], elem_id="training-voice")
            ui["runs"] = gr.Dropdown(
                label="Existing runs", choices=[], info="Select one to watch or resume it.", elem_id="training-runs"
            )
            ui["run_name"] = gr.Textbox(
                label="Run name",
                info="A new name starts a new run; an existing one resumes.",
                elem_id="training-run-name",
            )
        with gr.Row():
            with gr.Column(scale=3):
                for title, names, is_open in sections():
                    with gr.Accordion(title, open=is_open), gr.Row():
                        for field in form_fields():
                            if field.name in names:
                                ui["form"][field.name] = _field_component(field, ctx)
            with gr.Column(scale=2):
                ui["yaml"] = gr.Code(
                    language="yaml", label="train.yaml", interactive=False, max_lines=34, elem_id="training-yaml"
                )
        with gr.Row():
            ui["start"] = gr.Button("Start", variant="primary", elem_id="training-start")
            ui["stop"] = gr.Button("Stop", variant="stop", elem_id="training-stop")
        ui["status"] = gr.Markdown("Choose a voice and a run.", elem_id="training-status")
        with gr.Row():
            for key, title, color in (
                ("plot_text", "Text cross-entropy (train)", None),
                ("plot_mel", "Mel cross-entropy (train)", None),
                ("plot_validation", "Validation cross-entropy", "series"),
            ):
                ui[key] = gr.LinePlot(
                    None,
                    x="step",
                    y="value",
                    color=color,
                    color_map=COLORS if color else None,
                    title=title,
                    y_title="loss",
                    height=260,
                    elem_id=f"training-{key.replace('_', '-')}",
                )
        ui["log"] = gr.Textbox(
            label="Log (newest lines)", lines=LOG_LINES, max_lines=LOG_LINES + 4, elem_id="training-log"
        )
        ui["timer"] = gr.Timer(TICK_SECONDS, active=False)
        ui["tail"] = gr.State(new_tail())
    _wire(ctx, ui)
    return ui


def _wire(ctx: TabContext, ui: dict) -> None:
    form = ui["form"]
    form_list = list(form.values())
    config_inputs = set(form_list) | {ui["voice"], ui["run_name"]}
    watched = [ui["voice"], ui["run_name"], ui["tail"]]
    live = [ui["tail"], ui["plot_text"], ui["plot_mel"], ui["plot_validation"], ui["status"], ui["log"], ui["timer"]]

    def on_tick(voice, run, tail):
        fresh = not tail or tail.get("key") != f"{voice}/{run}"
        with engine_errors("Reading the run"):
            tail, grew = tail_metrics(tail, voice, run)
            status, log, running = monitor(voice, run)
        plots = loss_frames(tail["rows"]) if grew or fresh else (gr.skip(),) * 3
        return tail, *plots, status, log, gr.Timer(active=running)

    def on_refresh(voice, run, tail):
        exists = existing_run(voice, run) is not None
        return *on_tick(voice, run, None), gr.Button("Resume" if exists else "Start")

    def run_form(voice, run) -> list:
        try:
            config = TrainConfig.load(paths.run_dir(voice, run) / "train.yaml")
        except (ConfigError, OSError) as exc:
            gr.Warning(f"Cannot read the run's train.yaml: {exc}")
            return [gr.skip()] * len(form_list)
        return [to_form_value(name, getattr(config, name)) for name in form]

    def select_voice(voice, run=None):
        run_names = paths.list_runs(voice) if voice else []
        run = run if run in run_names else None
        return gr.Dropdown(choices=run_names, value=run), run or suggest_run_name(voice)

    def on_voice(voice):
        with engine_errors("Listing runs"):
            return select_voice(voice)

    def on_run(voice, run):
        with engine_errors("Opening the run"):
            return run, *run_form(voice, run)

    def on_show(voice, run):
        """Page load or tab select: keep a valid voice (fresh run list), else reattach to a
        running trainer, else show the first voice with a new run name."""
        choices = voice_choices()
        if voice in choices:
            run_names = paths.list_runs(voice)
            runs_update = gr.Dropdown(choices=run_names, value=run if run in run_names else None)
            return gr.Dropdown(choices=choices), runs_update, gr.skip(), *[gr.skip()] * len(form_list)
        running = find_running_run()
        voice, run = running if running else (pick(choices, None), None)
        runs_update, run_name = select_voice(voice, run)
        values = run_form(voice, run) if run else [gr.skip()] * len(form_list)
        return gr.Dropdown(choices=choices, value=voice), runs_update, run_name, *values

    def on_preview(values):
        return yaml_preview(named(values, form), values[ui["voice"]], values[ui["run_name"]])

    def on_start(values):
        voice, run = values[ui["voice"]], values[ui["run_name"]]
        with engine_errors("Starting training"):
            ctx.release_models()  # the trainer needs the memory more than cached models
            run_folder, resumed = start_run(named(values, form), voice, run, ctx.settings.base_model)
        gr.Info(f"{'Resumed' if resumed else 'Started'} {run_folder.name}.")
        return gr.Dropdown(choices=paths.list_runs(voice), value=run), gr.Timer(active=True)

    def on_stop(voice, run):
        with engine_errors("Stopping training"):
            stopping = bool(voice and run) and process.stop_training(paths.run_dir(voice, run))
        if not stopping:
            raise gr.Error("No trainer is running for this run.")
        gr.Info("Stop requested: the trainer finishes its step, saves a checkpoint and exits.")

    shown = [ui["voice"], ui["runs"], ui["run_name"], *form_list]
    ctx.blocks.load(on_show, [ui["voice"], ui["run_name"]], shown, show_progress="hidden")
    ui["tab"].select(on_show, [ui["voice"], ui["run_name"]], shown, show_progress="hidden")
    ui["voice"].input(on_voice, ui["voice"], [ui["runs"], ui["run_name"]])
    ui["runs"].input(on_run, [ui["voice"], ui["runs"]], [ui["run_name"], *form_list])
    gr.on(
        [ui["run_name"].change, ui["voice"].change],
        on_refresh,
        watched,
        [*live, ui["start"]],
        show_progress="hidden",
    )
    gr.on([c.change for c in config_inputs], on_preview, config_inputs, ui["yaml"], show_progress="hidden")
    ctx.blocks.load(on_preview, config_inputs, ui["yaml"], show_progress="hidden")
    ui["timer"].tick(on_tick, watched, live, show_progress="hidden")
    ui["start"].click(on_start, config_inputs, [ui["runs"], ui["timer"]]).then(
        on_refresh, watched, [*live, ui["start"]], show_progress="hidden"
    )
    ui["stop"].click(on_stop, [ui["voice"], ui["run_name"]], None)
