"""The one base class of the engine's own errors (house style 17).

Every error the engine raises for input or state the user can fix (a bad name, an unreadable
recording, a refused setting, a run that is already training) derives from :class:`TimbreError`,
and keeps the builtin base it had before (``ValueError``, ``RuntimeError``) so existing
``except ValueError`` still works. The web UI and the command line catch only ``TimbreError``
(and ``OSError`` where a file-system failure is the user's to fix), so a real bug surfaces as a
traceback instead of a toast.
"""

from __future__ import annotations


class TimbreError(Exception):
    """The base of every error the engine raises for bad input or state the user can fix; its
    message is one plain sentence fit to show as it is. The UI and CLI catch only these, so real
    bugs surface as tracebacks."""
