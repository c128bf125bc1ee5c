"""Training tab: the runs of a voice, a run's live status and plots, and the configuration form.

Four modules: :mod:`training_form` (form ⇄ ``TrainConfig``, YAML preview, checks, batch
suggestion), :mod:`training_runs` (run table, status, start / resume / new run from weights),
:mod:`training_plots` (the SVG plot and its guide) and :mod:`training_eval` (the checkpoints'
scores: curves, table, listening grid). This one lays them out and wires them.

Everything shown is read from disk on a ``gr.Timer`` (0.5 s): the metrics of the shown runs are
tailed from a byte offset kept per page (:class:`engine.metrics.RunSeries` in ``gr.State``);
the status, log and run table are re-read when a cheap stat signature of the run folders
changes. A page refresh or an app restart starts from offset 0 and finds a running trainer by
itself. The timer's event has its own concurrency group, so it never waits behind a long
transcription or generation (the app's default concurrency limit is 1 per event).
"""

from __future__ import annotations

import time

import gradio as gr

from engine import hardware, paths, runs
from engine.config import ConfigError, TrainConfig
from engine.metrics import RunSeries
from engine.training import process
from webui.tabs import TabContext, browser_text, engine_errors, named, pick, voice_choices
from webui.tabs import training_eval as teval
from webui.tabs import training_form as tform
from webui.tabs import training_plots as tplots
from webui.tabs import training_runs as truns

TICK_SECONDS = 0.5
#: Redraw the plot at most this often: a new point after a quiet spell shows within one tick,
#: while a fast trainer (the tiny test model logs several steps a second) costs one redraw a second.
MIN_REDRAW_S = 1.0
MONITOR = "training-monitor"  # concurrency group of the read-only refresh events
FORCE_EVERY_S = 5.0  # re-read the status at least this often (a trainer may die silently)
GPU_PROBE_TTL_S = 60.0


def new_view() -> dict:
    """Per-page monitor state: what is shown, the series read so far, the last signature."""
    return {"key": None, "series": {}, "signature": None, "choices": None, "drawn_at": 0.0, "stale": False,
            "eval_signature": None, "eval_default": None, "eval_key": None, "eval_grid": None}  # fmt: skip


def shown_runs(voice: str | None, run: str | None, compare: list | None) -> list[str]:
    """The run shown first, then the compared runs: those that exist, each once."""
    names = []
    for name in [run, *(compare or [])]:
        if name and name not in names and truns.existing_run(voice, name) is not None:
            names.append(name)
    return names


def update_series(view: dict, voice: str | None, names: list[str]) -> bool:
    """Read the new metrics rows of each shown run into ``view["series"]``; whether any arrived."""
    series = {name: view["series"].get(name) or RunSeries() for name in names}
    grew = False
    for name, run_series in series.items():
        grew |= run_series.update(paths.run_dir(voice, name))
    view["series"] = series
    return grew


def _start_button(status) -> gr.Button:
    if status is None:
        return gr.Button("Start", interactive=True)
    if status.state == "running":
        return gr.Button("Running", interactive=False)
    if status.state == "finished":
        return gr.Button("Finished", interactive=False)
    return gr.Button("Resume", interactive=True)


def refresh(ui: dict, view: dict, voice, run, compare, axis, force: bool = False) -> dict:
    """The monitor's updates as {component: value}: the plot when metrics arrived or the
    selection changed; status, log, run table, buttons and checkpoint choices when the run
    folders changed (or ``force``); nothing else, so an idle tick sends almost nothing."""
    voice_key = voice if voice in voice_choices() else None
    names = shown_runs(voice_key, run, compare)
    key = (voice, run, tuple(names), axis)
    out = {}
    fresh = force or key != view["key"]
    if fresh:
        view["series"] = {}
    grew = update_series(view, voice_key, names)
    view["stale"] = view["stale"] or grew
    if fresh or (view["stale"] and time.monotonic() - view["drawn_at"] >= MIN_REDRAW_S):
        out[ui["plot"]] = tplots.plot_html({n: view["series"][n] for n in names}, axis or "step")
        view.update(drawn_at=time.monotonic(), stale=False)
    all_runs = paths.list_runs(voice_key) if voice_key else []
    signature = (
        key,
        tuple(truns.folder_signature(voice_key, name) for name in all_runs),
        truns.folder_signature(voice_key, run),
        int(time.monotonic() // FORCE_EVERY_S),
    )
    if fresh or signature != view["signature"]:
        text, log, status = truns.monitor(voice_key, run)
        series = view["series"].get(run)
        if status is not None:
            text = truns.describe_status(status, series.best_validation() if series else None)
        best = series.best_validation() if series else None
        last_good = status.last_good_step if status else None
        choices = truns.checkpoint_choices(voice_key, run, best[0] if best else None, last_good)
        # The newest checkpoint is preselected when the list changes (the user's pick otherwise stays).
        checkpoint = {"value": choices[0][1] if choices else None} if fresh or choices != view["choices"] else {}
        view["choices"] = choices
        out |= {
            ui["status"]: text,
            ui["log"]: log,
            ui["run_table"]: truns.runs_table(voice_key),
            ui["start"]: _start_button(status),
            ui["stop"]: gr.Button(interactive=status is not None and status.state == "running"),
            ui["checkpoint"]: gr.Dropdown(choices=choices, **checkpoint),
            ui["spike"]: gr.Button(
                f"New run from the last good checkpoint step-{last_good:07d} at half the learning rate",
                visible=True,
            )
            if last_good is not None
            else gr.Button(visible=False),
        }
    if fresh:
        out[ui["runs"]] = gr.Dropdown(choices=all_runs, value=run if run in all_runs else None)
        out[ui["config_box"]] = gr.Accordion(open=truns.existing_run(voice_key, run) is None)
        out[ui["compare"]] = gr.Dropdown(choices=[r for r in all_runs if r != run])
        out[ui["branch_name"]] = truns.suggest_run_name(voice_key)
    view.update(key=key, signature=signature)
    out[ui["view"]] = view
    return out


def build(ctx: TabContext) -> dict:
    """The Training tab; returns its components by name (form fields under ``ui["form"]``)."""
    ui: dict = {"form": {}}
    with gr.Tab("Training", id="training", elem_id="tab-training") as ui["tab"]:
        with gr.Row(equal_height=True):
            ui["voice"] = gr.Dropdown(label="Voice", choices=[], elem_id="training-voice")
            ui["runs"] = gr.Dropdown(
                label="Existing runs", choices=[], info="Select one to watch or resume it.",
                elem_id="training-runs",
            )  # fmt: skip
            ui["run_name"] = gr.Textbox(
                label="Run name", info="A new name starts a new run; an existing one is shown and resumed.",
                elem_id="training-run-name",
            )  # fmt: skip
        ui["run_table"] = gr.Dataframe(
            headers=truns.RUN_COLUMNS, label="Runs of this voice (select a row to open it)", interactive=False,
            max_height=220, elem_id="training-run-table",
        )  # fmt: skip
        with gr.Accordion("Configuration of a new run", open=True, elem_id="training-config") as ui["config_box"]:
            tform.build_form(ctx, ui)
        with gr.Row():
            ui["start"] = gr.Button("Start", variant="primary", elem_id="training-start")
            ui["stop"] = gr.Button("Stop", variant="stop", interactive=False, elem_id="training-stop")
        ui["status"] = gr.Markdown("Choose a voice and a run.", elem_id="training-status")
        ui["spike"] = gr.Button(visible=False, variant="secondary", elem_id="training-spike-branch")
        with gr.Accordion("Start a new run from these weights", open=False, elem_id="training-branch-box"):
            gr.Markdown(
                "Resume continues *this* run from its newest checkpoint. Here a **new run** starts from the "
                "weights of the checkpoint you pick, with this run's settings and its learning rate times the "
                "factor (lower it after a spike or over-fitting). This run is left as it is."
            )
            with gr.Row(equal_height=True):
                ui["checkpoint"] = gr.Dropdown(label="Checkpoint", choices=[], elem_id="training-checkpoint")
                ui["branch_name"] = gr.Textbox(label="New run name", elem_id="training-branch-name")
                ui["lr_factor"] = gr.Number(
                    1.0, label="Learning-rate factor", minimum=0.01, maximum=10, elem_id="training-lr-factor"
                )
                ui["branch"] = gr.Button("Start new run from these weights", elem_id="training-branch")
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row(equal_height=True):
                    ui["axis"] = gr.Radio(["step", "epoch"], value="step", label="x axis", elem_id="training-axis")
                    ui["compare"] = gr.Dropdown(
                        label="Compare with", choices=[], multiselect=True, elem_id="training-compare",
                        info="Overlay other runs of this voice.",
                    )  # fmt: skip
                ui["plot"] = gr.HTML(tplots.plot_html({}), js_on_load=None, elem_id="training-plot")
            with gr.Column(scale=1, min_width=280):
                gr.Markdown(tplots.GUIDE, elem_id="training-guide")
        teval.build(ui)
        ui["log"] = gr.Textbox(
            label="Log (newest lines)", lines=truns.LOG_LINES, max_lines=truns.LOG_LINES + 4, elem_id="training-log"
        )
        ui["timer"] = gr.Timer(TICK_SECONDS)
        ui["view"] = gr.State(new_view())
    _wire(ctx, ui)
    return ui


def _wire(ctx: TabContext, ui: dict) -> None:
    form = ui["form"]
    form_list = list(form.values())
    config_inputs = set(form_list) | {ui["voice"], ui["run_name"]}
    watched = [ui["view"], ui["voice"], ui["run_name"], ui["compare"], ui["axis"], ui["eval_listen"]]
    live = [
        ui[k]
        for k in ("view", "plot", "status", "log", "run_table", "start", "stop", "checkpoint", "spike",
                  "config_box", "compare", "branch_name", "runs", "eval_text", "eval_plot", "eval_table",
                  "eval_listen", "eval_grid")
    ]  # fmt: skip
    monitor_events = {"concurrency_limit": 1, "concurrency_id": MONITOR, "show_progress": "hidden"}
    probe = {"gpus": None, "at": 0.0}

    def on_tick(view, voice, run, compare, axis, listen):
        with engine_errors("Reading the run"):
            return refresh(ui, view, voice, run, compare, axis) | teval.refresh(ui, view, voice, run, listen)

    def on_change(view, voice, run, compare, axis, listen):
        with engine_errors("Reading the run"):
            out = refresh(ui, view, voice, run, compare, axis, force=True)
            return out | teval.refresh(ui, view, voice, run, listen, force=True)

    def on_listen(voice, run, listen):
        with engine_errors("Reading the scores"):
            return teval.listen(voice, run, listen)

    def run_form(voice, run) -> list:
        try:
            config = TrainConfig.load(paths.run_dir(voice, run) / "train.yaml")
        except (ConfigError, OSError) as exc:
            gr.Warning(browser_text(f"Cannot read the run's train.yaml: {exc}"))
            return [gr.skip()] * len(form_list)
        return [tform.to_form_value(name, getattr(config, name)) for name in form]

    def select_voice(voice, run=None):
        run_names = paths.list_runs(voice) if voice else []
        run = run if run in run_names else None
        return gr.Dropdown(choices=run_names, value=run), run or truns.suggest_run_name(voice)

    def new_run_form(voice) -> list:
        """A new run of ``voice``: the form keeps its values but takes the dataset's language
        and that language's evaluation sentences."""
        language = tform.default_language(voice)
        fresh = {"language": language, "eval_sentences": tform.default_eval_sentences(voice, language)}
        family = tform.detected_family(ctx.settings.base_model_dir(), "xtts")
        if family != "xtts":  # the Settings tab's base model is of another family: its recipe
            fresh |= {"family": family, **tform.family_recipe(family)}
        return [fresh.get(name, gr.skip()) for name in form]

    def sentences_for(voice, language, sentences):
        """The defaults of ``language`` unless the box holds sentences of the user's own."""
        if not tform.stock_sentences(sentences):
            return gr.skip()
        return tform.default_eval_sentences(voice, language)

    def on_voice(voice, sentences=None):
        with engine_errors("Listing runs"):
            language = tform.default_language(voice)
            return (
                *select_voice(voice), gr.Dropdown(value=[]), sentences_for(voice, language, sentences), language
            )  # fmt: skip

    def on_language(voice, language, sentences):
        return sentences_for(voice, language, sentences)

    view_names = ["freeze", *tform.FAMILY_ONLY]
    recipe_names = [name for name in tform.family_recipe("xtts") if name not in view_names]

    def on_family(family, freeze):
        """The user chose a family: its recipe's values and its fields."""
        recipe, view = tform.family_recipe(family), tform.family_view(family, freeze)
        return [*(recipe[name] for name in recipe_names), *(view[name] for name in view_names)]

    def on_family_view(family, freeze):
        view = tform.family_view(family, freeze)
        return [view[name] for name in view_names]

    def on_base_model(base_model, family, freeze):
        """A base-model folder of the other family typed in: switch the form to that family."""
        found = tform.detected_family(base_model, family)
        if found == family:
            return [gr.skip()] * (1 + len(recipe_names) + len(view_names))
        return [found, *on_family(found, freeze)]

    def on_run(voice, run):
        with engine_errors("Opening the run"):
            return run, *run_form(voice, run)

    def on_table_select(voice, evt: gr.SelectData):
        run = (evt.row_value or [None])[0]
        if not run:
            return gr.skip(), gr.skip(), *[gr.skip()] * len(form_list)
        with engine_errors("Opening the run"):
            return gr.Dropdown(value=run), run, *run_form(voice, run)

    def on_show(voice, run):
        """Page load or tab select: keep a valid voice (fresh run list), else reattach to a
        running trainer, else show the first voice with a new run name."""
        choices = voice_choices()
        if voice in choices:
            run_names = paths.list_runs(voice)
            runs_update = gr.Dropdown(choices=run_names, value=run if run in run_names else None)
            return gr.Dropdown(choices=choices), runs_update, gr.skip(), *[gr.skip()] * len(form_list)
        running = truns.find_running_run()
        voice, run = running if running else (pick(choices, None), None)
        runs_update, run_name = select_voice(voice, run)
        values = run_form(voice, run) if run else new_run_form(voice)
        return gr.Dropdown(choices=choices, value=voice), runs_update, run_name, *values

    def on_config(values):
        voice, run = values[ui["voice"]], values[ui["run_name"]]
        form_values = named(values, form)
        exists = truns.existing_run(voice, run) is not None
        return tform.yaml_preview(form_values, voice, run), tform.config_checks(form_values, voice, run, exists)

    def on_suggest(values):
        if probe["gpus"] is None or time.monotonic() - probe["at"] > GPU_PROBE_TTL_S:
            try:
                probe["gpus"] = hardware.gpu_memory()
            except RuntimeError as exc:
                return f"Batch suggestion unavailable: {exc}"
            probe["at"] = time.monotonic()
        suggestion = tform.batch_suggestion(named(values, form), values[ui["voice"]], probe["gpus"])
        return f"**Suggested batch:** {suggestion.reason}"

    def on_apply(values):
        suggestion = tform.batch_suggestion(named(values, form), values[ui["voice"]], probe["gpus"] or [])
        gpus = suggestion.gpus if suggestion.gpus else values[form["gpus"]]
        if suggestion.batch_frames:  # F5-TTS: frames per GPU; the clip count stays as it is
            return values[form["batch_size"]], suggestion.gradient_accumulation, gpus, suggestion.batch_frames
        return suggestion.batch_size, suggestion.gradient_accumulation, gpus, values[form["batch_frames"]]

    def on_start(values):
        voice, run = values[ui["voice"]], values[ui["run_name"]]
        with engine_errors("Starting training"):
            ctx.release_models()  # the trainer needs the memory more than cached models
            try:
                run_folder, resumed = truns.start_run(named(values, form), voice, run, ctx.settings.base_model)
            except process.TrainingAlreadyRunning as exc:  # e.g. a second page's click: one trainer goes on
                gr.Warning(browser_text(str(exc)))
                return gr.skip()
        gr.Info(f"{'Resumed' if resumed else 'Started'} {run_folder.name}.")
        return gr.Dropdown(choices=paths.list_runs(voice), value=run)

    def on_stop(voice, run):
        with engine_errors("Stopping training"):
            stopping = bool(voice and run) and process.stop_training(paths.run_dir(voice, run))
        if not stopping:
            raise gr.Error("No trainer is running for this run.")
        gr.Info("Stop requested: the trainer finishes its step, saves a checkpoint and exits.")

    def started_branch(voice, folder):
        gr.Info(f"Started {folder.name} from the chosen weights.")
        return gr.Dropdown(choices=paths.list_runs(voice), value=folder.name), folder.name

    def on_branch(voice, run, checkpoint, new_run, factor):
        with engine_errors("Starting a new run from the weights"):
            ctx.release_models()
            return started_branch(voice, truns.branch_and_start(voice, run, new_run, checkpoint, factor or 1.0))

    def on_spike(voice, run):
        with engine_errors("Starting a new run from the last good checkpoint"):
            status = runs.run_status(voice, run)
            if status.last_good_step is None:
                raise FileNotFoundError(f"run {run!r} has no last good checkpoint before a spike")
            checkpoint = runs.checkpoint_name(status.last_good_step)
            name = f"{run}-from-{status.last_good_step}"
            new_run = name if truns.existing_run(voice, name) is None else truns.suggest_run_name(voice, name)
            ctx.release_models()
            return started_branch(voice, truns.branch_and_start(voice, run, new_run, checkpoint, 0.5))

    shown = [ui["voice"], ui["runs"], ui["run_name"], *form_list]
    for event in (ctx.blocks.load, ui["tab"].select):
        event(on_show, [ui["voice"], ui["run_name"]], shown, show_progress="hidden")
        event(on_suggest, config_inputs, ui["suggestion"], show_progress="hidden")
    ui["voice"].input(
        on_voice, [ui["voice"], form["eval_sentences"]],
        [ui["runs"], ui["run_name"], ui["compare"], form["eval_sentences"], form["language"]],
    )  # fmt: skip
    form["language"].input(
        on_language, [ui["voice"], form["language"], form["eval_sentences"]], form["eval_sentences"],
        show_progress="hidden",
    )  # fmt: skip
    ui["runs"].input(on_run, [ui["voice"], ui["runs"]], [ui["run_name"], *form_list])
    family_outputs = [*(form[name] for name in recipe_names), *(form[name] for name in view_names)]
    form["family"].input(on_family, [form["family"], form["freeze"]], family_outputs, show_progress="hidden")
    form["family"].change(
        on_family_view, [form["family"], form["freeze"]], [form[name] for name in view_names], show_progress="hidden"
    )
    form["family"].change(on_suggest, config_inputs, ui["suggestion"], show_progress="hidden")  # clips or frames
    gr.on(  # typed in: when the box is left or Enter is pressed
        [form["base_model"].blur, form["base_model"].submit], on_base_model,
        [form["base_model"], form["family"], form["freeze"]], [form["family"], *family_outputs], show_progress="hidden",
    )  # fmt: skip
    ui["run_table"].select(on_table_select, ui["voice"], [ui["runs"], ui["run_name"], *form_list])
    changes = [ui["run_name"].change, ui["voice"].change, ui["compare"].change, ui["axis"].change]
    gr.on(changes, on_change, watched, live, **monitor_events)
    gr.on(
        [c.change for c in config_inputs], on_config, config_inputs, [ui["yaml"], ui["checks"]], show_progress="hidden"
    )
    ctx.blocks.load(on_config, config_inputs, [ui["yaml"], ui["checks"]], show_progress="hidden")
    ui["apply_suggestion"].click(
        on_apply, config_inputs,
        [form["batch_size"], form["gradient_accumulation"], form["gpus"], form["batch_frames"]],
    )  # fmt: skip
    ui["timer"].tick(on_tick, watched, live, trigger_mode="once", **monitor_events)
    ui["eval_listen"].input(on_listen, [ui["voice"], ui["run_name"], ui["eval_listen"]], ui["eval_grid"])
    ui["start"].click(on_start, config_inputs, ui["runs"]).then(on_change, watched, live, **monitor_events)
    ui["stop"].click(on_stop, [ui["voice"], ui["run_name"]], None).then(on_change, watched, live, **monitor_events)
    branch_inputs = [ui["voice"], ui["run_name"], ui["checkpoint"], ui["branch_name"], ui["lr_factor"]]
    ui["branch"].click(on_branch, branch_inputs, [ui["runs"], ui["run_name"]])
    ui["spike"].click(on_spike, [ui["voice"], ui["run_name"]], [ui["runs"], ui["run_name"]])
