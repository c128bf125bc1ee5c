"""Compose the tabs into one Gradio app and launch it.

``python -m webui [--host 127.0.0.1] [--port 7860] [--base-model DIR]``
"""

from __future__ import annotations

import argparse
import logging
import os

import gradio as gr

from engine import paths
from engine.settings import SettingsError, load_settings
from engine.training import process
from webui.tabs import AppSettings, TabContext, dataset, generate, settings, training

TITLE = "Timbre"
CSS = """
#timbre-header h1 { margin-bottom: 0; }
#training-status, #dataset-summary { min-height: 2.5em; }
"""


def build_app(base_model: str | os.PathLike | None = None) -> gr.Blocks:
    """The Timbre Blocks: Dataset, Training, Generate and Settings tabs.

    ``base_model`` is the XTTS-v2 folder the app starts with (default models/xtts-v2/).
    """
    with gr.Blocks(title=TITLE) as demo:
        ctx = TabContext(demo, startup_settings(base_model))
        gr.Markdown("# Timbre\nFine-tune an XTTS-v2 voice from your recordings.", elem_id="timbre-header")
        with gr.Tabs(elem_id="timbre-tabs"):
            data_ui = dataset.build(ctx)
            training.build(ctx)
            generate.build(ctx)
            settings_ui = settings.build(ctx)
        # The Settings tab's Whisper defaults fill the Dataset tab's fields.
        settings_ui["whisper_backend"].change(lambda v: v, settings_ui["whisper_backend"], data_ui["backend"])
        settings_ui["whisper_model"].change(lambda v: v, settings_ui["whisper_model"], data_ui["whisper_model"])
    return demo


def startup_settings(base_model: str | os.PathLike | None = None) -> AppSettings:
    """The saved settings (settings.json), with ``--base-model`` taking precedence for this
    session. An unreadable settings file is reported and the defaults are used (it is not
    overwritten until the user changes a setting)."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        logging.getLogger("webui").warning("%s; using the default settings", exc)
        settings = AppSettings()
    if base_model:
        settings.base_model = str(base_model)
    return settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m webui", description="Timbre web UI")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--base-model", default=None, help="XTTS-v2 folder (default models/xtts-v2/)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build and serve the app until interrupted."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    demo = build_app(args.base_model)
    process.reattach()  # watch trainers left running by an earlier app process
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        allowed_paths=[str(paths.home())],
        css=CSS,
        theme=gr.themes.Soft(),
        footer_links=["gradio", "settings"],
        ssr_mode=False,
        show_error=True,
    )
    return 0
