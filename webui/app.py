"""Compose the tabs into one Gradio app and launch it.

``python -m webui [--host 127.0.0.1] [--port 7860] [--base-model DIR] [--auth USER:PASSWORD |
--auth-file FILE] [--max-file-size SIZE]``

What the server hands out (README, "Security"): the page, its API, the files Gradio copied
into its cache for the page (uploads, the clip being listened to) and the generated outputs
and exported zips under ``outputs/`` (:mod:`webui.serving`). Nothing else of the data folder
or the install folder: no ``allowed_paths``. Off loopback a password is required
(:func:`webui.access.resolve_auth`); uploads are bounded (``--max-file-size``, HTTP 413 above it); errors
reach the browser without tracebacks or absolute paths (:func:`webui.tabs.browser_text`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import gradio as gr
from starlette.middleware import Middleware

from engine.settings import SettingsError, format_size, load_settings, parse_size
from engine.training import process
from webui import access
from webui.serving import ServedFiles
from webui.tabs import AppSettings, TabContext, dataset, generate, settings, training

TITLE = "Timbre"
CSS = """
#timbre-header h1 { margin-bottom: 0; }
#training-status, #dataset-summary { min-height: 2.5em; }
"""


def build_app(base_model: str | os.PathLike | None = None, app_settings: AppSettings | None = None) -> gr.Blocks:
    """The Timbre Blocks: Dataset, Training, Generate and Settings tabs.

    ``base_model`` is the XTTS-v2 folder the app starts with (default models/xtts-v2/);
    ``app_settings`` the app settings (default: :func:`startup_settings`).
    """
    with gr.Blocks(title=TITLE) as demo:
        ctx = TabContext(demo, app_settings or startup_settings(base_model))
        gr.Markdown("# Timbre\nFine-tune a voice (XTTS-v2 or F5-TTS) from your recordings.", elem_id="timbre-header")
        with gr.Tabs(elem_id="timbre-tabs"):
            data_ui = dataset.build(ctx)
            training.build(ctx)
            generate.build(ctx)
            settings_ui = settings.build(ctx)
        # The Settings tab's Whisper defaults fill the Dataset tab's fields.
        settings_ui["whisper_backend"].change(lambda v: v, settings_ui["whisper_backend"], data_ui["backend"])
        settings_ui["whisper_model"].change(lambda v: v, settings_ui["whisper_model"], data_ui["whisper_model"])
    return demo


def startup_settings(base_model: str | os.PathLike | None = None, max_file_size: str | None = None) -> AppSettings:
    """The saved settings (settings.json), with ``--base-model`` and ``--max-file-size``
    taking precedence for this session. An unreadable settings file is reported and the
    defaults are used (it is not overwritten until the user changes a setting)."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        logging.getLogger("webui").warning("%s; using the default settings", exc)
        settings = AppSettings()
    if base_model:
        settings.base_model = str(base_model)
    if max_file_size:
        settings.max_file_size = max_file_size
    return settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m webui", description="Timbre web UI")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this computer only)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--base-model", default=None, help="XTTS-v2 folder (default models/xtts-v2/)")
    login = parser.add_mutually_exclusive_group()
    login.add_argument(
        "--auth",
        metavar="USER:PASSWORD",
        default=None,
        help=f"require this login (needed off 127.0.0.1; ${access.AUTH_ENV} does the same without showing in the process list)",
    )
    login.add_argument(
        "--auth-file", metavar="FILE", default=None, help="require a login from FILE's user:password lines"
    )
    parser.add_argument(
        "--max-file-size",
        metavar="SIZE",
        default=None,
        help="largest upload accepted, per file, e.g. 500mb or 4gb (default: the Settings value, 4gb); larger ones get HTTP 413",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build and serve the app until interrupted. Returns 2, with the reason on stderr, when
    it refuses to start (a non-loopback address without a login, a bad login or size)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        auth = access.resolve_auth(args.host, args.auth, args.auth_file)
        if args.max_file_size:
            parse_size(args.max_file_size)
    except (access.StartupError, SettingsError) as exc:
        where = "" if isinstance(exc, access.StartupError) else "--max-file-size: "
        print(f"python -m webui: error: {where}{exc}", file=sys.stderr)
        return 2
    app_settings = startup_settings(args.base_model, args.max_file_size)
    try:
        max_file_size = parse_size(app_settings.max_file_size)
    except SettingsError as exc:
        app_settings.max_file_size = AppSettings.max_file_size
        max_file_size = parse_size(app_settings.max_file_size)
        logging.getLogger("webui").warning("settings.json max_file_size: %s; using %s", exc, app_settings.max_file_size)
    logging.getLogger("webui").info(
        "serving on %s:%s, %s, uploads up to %s per file",
        args.host,
        args.port,
        f"login required ({len(auth)} user(s))" if auth else "no login (loopback only)",
        format_size(max_file_size),
    )
    demo = build_app(args.base_model, app_settings)
    process.reattach()  # watch trainers left running by an earlier app process
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        auth=auth,
        auth_message="Timbre: log in with a user and password given to the server (--auth, --auth-file or TIMBRE_AUTH).",
        max_file_size=max_file_size,
        # Serve nothing of the data folder by path: what the page shows is copied into Gradio's
        # cache, or lies in outputs/ (gr.set_static_paths in the Generate tab).
        allowed_paths=None,
        app_kwargs={"middleware": [Middleware(ServedFiles)]},  # and of outputs/, audio and zips only
        share=False,  # never a public tunnel, whatever GRADIO_SHARE says
        show_error=False,  # unexpected exceptions: a plain "Error" in the page, the traceback in this log
        mcp_server=False,
        run_history=False,
        enable_monitoring=False,
        css=CSS,
        theme=gr.themes.Soft(),
        footer_links=["gradio", "settings"],
        ssr_mode=False,
    )
    return 0
