"""Who may use the app: loopback without a login, anything else only with one.

``python -m webui`` on 127.0.0.1 (the default) serves this computer only. Any other address
(0.0.0.0, a LAN address, a host name) reaches other machines, so :func:`resolve_auth` insists
on a login there: ``--auth USER:PASSWORD``, ``--auth-file FILE`` (one ``user:password`` per
line) or ``$TIMBRE_AUTH``. Gradio then answers its API and file routes with 401 until the
browser has logged in (``gradio.routes``: ``login_check`` on ``/config``, ``/file=``,
``/upload``, ``/queue/join``, ``/call/…``).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from engine.errors import TimbreError

#: Environment variable holding ``USER:PASSWORD`` (kept out of the process list, unlike ``--auth``).
AUTH_ENV = "TIMBRE_AUTH"


class StartupError(TimbreError, ValueError):
    """The app refuses to start as asked; the message says why and what to do."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``: reachable
    from this computer only. Anything else, 0.0.0.0 and :: included, is reachable from others."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_credentials(text: str, where: str) -> tuple[str, str]:
    """``(user, password)`` from ``USER:PASSWORD`` (the password may hold ``:``); raises
    StartupError naming ``where``, never echoing the password."""
    user, sep, password = text.strip().partition(":")
    if not sep or not user.strip() or not password:
        raise StartupError(f"{where}: expected USER:PASSWORD with a non-empty user and password")
    return user.strip(), password


def read_auth_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The ``user:password`` lines of ``path`` (blank lines and lines starting with ``#`` are
    skipped). Raises StartupError for an unreadable file, a bad line (named by its number) or
    a file without any user."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"--auth-file {path}: cannot be read ({exc})") from None
    users = [
        parse_credentials(line, f"--auth-file {path}, line {number}")
        for number, line in enumerate(lines, start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not users:
        raise StartupError(f"--auth-file {path}: holds no user:password line")
    return users


def resolve_auth(host: str, auth: str | None, auth_file: str | None, env: dict | None = None) -> list | None:
    """The users Gradio asks for (``[(user, password), …]``), or None for no login.

    From ``--auth``, else ``--auth-file``, else ``$TIMBRE_AUTH``. Without any of them the app
    serves loopback only: on any other address it would hand every recording, dataset and
    model to whoever reaches the port, so StartupError is raised instead.
    """
    env = os.environ if env is None else env
    if auth:
        return [parse_credentials(auth, "--auth")]
    if auth_file:
        return read_auth_file(auth_file)
    if env.get(AUTH_ENV):
        return [parse_credentials(env[AUTH_ENV], AUTH_ENV)]
    if not is_loopback(host):
        raise StartupError(
            f"refusing to serve on {host} without a password: anyone who can reach this computer could "
            "listen to the recordings, download the datasets and models and start training. Add "
            f"--auth USER:PASSWORD, --auth-file FILE (one user:password per line) or set {AUTH_ENV}=USER:PASSWORD; "
            "or serve on 127.0.0.1 (the default)."
        )
    return None
