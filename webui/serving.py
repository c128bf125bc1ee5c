"""What the server hands out by path: the generated outputs and exported zips, and nothing else
of the data folder or the install folder.

Gradio 6 serves ``/gradio_api/file=<path>`` (and the older ``/gradio_api/file/<path>``) from
three places (``gradio.route_utils.file_fetch``): ``allowed_paths``, the static paths
(``gr.set_static_paths``) and its own cache, where it copies every file a component shows.
Timbre sets no ``allowed_paths``; the Generate tab makes ``outputs/`` a static path so that
multi-gigabyte exports are not copied. That folder also holds files the page never needs:
the settings JSON beside each output, and ``outputs/<voice>/.latents/`` (conditioning latents,
enough to make the base model speak with the voice). :class:`ServedFiles` narrows the file
routes, in front of Gradio, to :func:`may_serve`: inside the data folder and the install
folder, only audio and ``.zip`` files in ``outputs/`` outside any dot-folder; URLs never (the
page never asks the server to fetch one); anything else goes on to Gradio's own checks.
"""

from __future__ import annotations

import os
from pathlib import Path

from gradio.utils import get_upload_folder
from starlette.responses import PlainTextResponse

from engine import paths
from engine.speech import audio

#: The routes that serve a file named in the URL (``gradio.routes``; under ``/gradio_api``).
FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/")
#: What the page plays or offers from ``outputs/``: generated speech and exported models.
SERVED_SUFFIXES = frozenset({*audio.SUPPORTED_EXTENSIONS, ".zip"})


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def may_serve(target: str) -> bool:
    """Whether the file route may go on to Gradio with ``target`` (the decoded text after
    ``file=``, a path or a URL).

    False for a URL or any scheme (``http://``, ``file://``), and for a path that, written or
    resolved (``..`` and symbolic links followed), lies in the data folder or the install
    folder, unless it is an audio or ``.zip`` file under ``outputs/`` with no component
    starting with ``.``. True for anything else: Gradio's upload folder and cache, and paths
    Gradio refuses itself (403) because they are neither in its cache nor static.
    """
    if "://" in target or target.startswith(("http:", "https:", "file:", "data:")):
        return False
    written = Path(os.path.abspath(target))  # a relative path is relative to the working directory, as in Gradio
    real = written.resolve()
    if _inside(real, Path(get_upload_folder()).resolve()):
        return True  # Gradio's own cache (even were it inside the data folder)
    guarded = [paths.home(), paths.PROJECT_ROOT]
    if not any(_inside(p, base) or _inside(p, base.resolve()) for p in (written, real) for base in guarded):
        return True
    outputs = paths.outputs_dir().resolve()
    if not _inside(real, outputs) or real == outputs:
        return False
    relative = real.relative_to(outputs)
    return not any(part.startswith(".") for part in relative.parts) and real.suffix.lower() in SERVED_SUFFIXES


class ServedFiles:
    """ASGI middleware: 403 for a file-route request :func:`may_serve` refuses; every other
    request passes through untouched (it runs before Gradio's login check, and answers the
    same whether or not the file exists)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            path = scope.get("path", "")
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            for route in FILE_ROUTES:
                if path.startswith(route) and not may_serve(path[len(route) :]):
                    await PlainTextResponse("File not allowed.", status_code=403)(scope, receive, send)
                    return
        await self.app(scope, receive, send)
