"""The tabs of the web UI, one module each, and the small adapters they share.

Each tab module has ``build(ctx) -> dict[str, Component]``, called inside ``gr.Blocks`` by
:func:`webui.app.build_app`. Handlers receive a *set* of components (Gradio passes a dict keyed
by component); :func:`named` turns that into a dict keyed by field name, so the handler logic
is plain functions that tests call without a browser. Engine errors are plain exceptions
deriving from :class:`engine.errors.TimbreError`; :func:`engine_errors` turns those (and
``OSError``: a full disk, a refused permission, a missing file) into ``gr.Error`` (absolute
paths removed by :func:`browser_text`) and lets anything else through to Gradio, which shows a
plain "Error" and logs the traceback: a bug is not dressed up as the user's mistake.
:class:`FormError` is the tabs' own "complete the form first". :func:`progress_callable` hands the engine a plain
``progress(fraction, description)`` backed by ``gr.Progress``. :func:`page_file` hands Gradio
a data-folder file the page plays, without the data folder ever being served.
"""

from __future__ import annotations

import gc
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from gradio.processing_utils import save_file_to_cache
from gradio.utils import get_upload_folder

from engine import paths
from engine.errors import TimbreError
from engine.settings import AppSettings, format_size, parse_size, save_settings

logger = logging.getLogger("webui")

#: What a handler shows the user as a message: the engine's own errors, and file-system
#: failures (disk full, permission denied, a file removed meanwhile). Anything else is a bug and
#: reaches Gradio as it is (a plain "Error" in the page, the traceback in the server log).
ENGINE_ERRORS = (TimbreError, OSError)


class FormError(TimbreError, ValueError):
    """A form to complete or correct before its action runs ("choose a voice first"); the
    message says what to do."""


@dataclass
class TabContext:
    """What ``build()`` gets: the Blocks being built (for ``load`` events), the settings, and
    the models the app keeps loaded between requests (the Generate tab's synthesizer and the
    scorer that ranks its candidates)."""

    blocks: gr.Blocks
    settings: AppSettings = field(default_factory=AppSettings)
    synthesizer: Any = None
    scorer: Any = None

    def save_settings(self) -> None:
        """Keep the settings for the next start (settings.json in the data folder)."""
        try:
            save_settings(self.settings)
        except OSError as exc:
            logger.warning("settings not saved: %s", exc)

    def release_models(self) -> None:
        """Drop the loaded TTS and Whisper models (before training takes the memory)."""
        from engine.speech import transcribe

        self.synthesizer = None
        self.scorer = None
        transcribe.unload_models()
        gc.collect()


def named(values: dict[Any, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Values of a set-of-components input, keyed by the names in ``components``."""
    return {name: values[comp] for name, comp in components.items() if comp in values}


@contextmanager
def engine_errors(what: str) -> Iterator[None]:
    """Re-raise an :data:`ENGINE_ERRORS` exception as ``gr.Error("<what>: <message>")`` (its
    traceback to the log); any other exception passes unchanged (Gradio logs it)."""
    try:
        yield
    except gr.Error:
        raise
    except ENGINE_ERRORS as exc:
        logger.warning("%s failed", what, exc_info=True)
        raise gr.Error(browser_text(f"{what}: {exc}")) from exc


# An absolute path not under a known folder: after the start of the text, a space, a quote, a
# bracket, "=" or ","; POSIX ("/a/b", not "//host", "1/2" or "5 / 10") or Windows ("C:\\a", "C:/a").
_ABSOLUTE_PATH = re.compile(r"""(?:^|(?<=[\s'"(\[{<=,]))(?:/(?!/)|[A-Za-z]:[\\/])[^\s'"<>|()\[\]{},;]+""")


def browser_text(text: str) -> str:
    """``text`` fit for the browser: no absolute paths. Paths in the data folder or the install
    folder become relative to it (``training/anna/run-1/train.yaml``); any other absolute path
    is cut to its last component (``…/xtts-v2``). The full text, with its paths, belongs in the
    server log."""
    text = str(text)
    for base in sorted({str(paths.home()), str(paths.PROJECT_ROOT)}, key=len, reverse=True):
        # the folder itself becomes ".", a path inside it its relative path; "/a/b2" is not in "/a/b"
        inside = re.escape(base) + r"(?:[\\/]|(?=$|[\s'\")\]},:;]))"
        text = re.sub(inside, lambda m: "" if m.group().endswith(("/", "\\")) else ".", text)
    return _ABSOLUTE_PATH.sub(lambda m: "…/" + re.split(r"[\\/]", m.group().rstrip("/\\"))[-1], text)


def page_file(path: str | os.PathLike | None) -> str | None:
    """A copy of ``path`` in Gradio's upload folder, for a component the page plays or offers
    (None when ``path`` is None or not a file).

    The data folder is never among the paths Gradio may serve, and Gradio copies a value it
    returns only from the working directory or the system temp folder; a data folder elsewhere
    (``TIMBRE_HOME``) would fail. So the file goes through Gradio's own cache function
    (content-addressed, one copy per content), which Gradio then serves and never copies again.
    """
    if path is None or not os.path.isfile(path):
        return None
    return save_file_to_cache(path, cache_dir=get_upload_folder())


def upload_limit(ctx: TabContext) -> str:
    """The upload limit per file in force, as the page states it ("4 GB")."""
    try:
        return format_size(parse_size(ctx.settings.max_file_size))
    except ValueError:
        return format_size(parse_size(AppSettings.max_file_size))


def progress_callable(progress: gr.Progress) -> Callable[[float, str], None]:
    """A plain ``progress(fraction 0-1, description)`` for the engine, shown by Gradio."""

    def report(fraction: float, description: str = "") -> None:
        progress(max(0.0, min(1.0, float(fraction))), desc=description)

    return report


class LogLines(list):
    """A ``log`` callable for the engine that keeps the lines (shown after the call) and logs them."""

    def __call__(self, line: str) -> None:
        logger.info("%s", line)
        self.append(str(line))

    def text(self) -> str:
        return "\n".join(self)


def voice_choices() -> list[str]:
    """Voices that have recordings or a dataset."""
    return paths.list_voices()


def pick(choices: list[str], current: str | None, fallback: str | None = None) -> str | None:
    """``current`` if it is still a choice, else ``fallback`` if it is, else the first choice."""
    if current in choices:
        return current
    if fallback in choices:
        return fallback
    return choices[0] if choices else None


def voice_dropdown(current: str | None = None) -> tuple[gr.Dropdown, str | None]:
    """Fresh choices for a voice dropdown, keeping ``current`` when it still exists; returns
    (the dropdown update, the voice it shows)."""
    choices = voice_choices()
    voice = pick(choices, current)
    return gr.Dropdown(choices=choices, value=voice), voice
