"""One base class for the engine's own errors (house style 17): every public exception class an
engine module defines derives from TimbreError, which the web UI and the command line catch
(with OSError) and nothing else."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import engine
from engine.errors import TimbreError


def engine_exception_classes() -> list[type[BaseException]]:
    """The public exception classes defined in engine's modules (not the ones they import).
    A module whose optional library is missing (e.g. f5-tts for its family) is skipped."""
    found = []
    for info in pkgutil.walk_packages(engine.__path__, prefix="engine."):
        if info.name == "engine.__main__":
            continue
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as exc:  # an optional library, never one of engine's modules
            if (exc.name or "").split(".")[0] == "engine":
                raise
            continue
        found += [
            cls
            for name, cls in vars(module).items()
            if inspect.isclass(cls)
            and issubclass(cls, Exception)
            and not name.startswith("_")
            and cls.__module__ == module.__name__
        ]
    return sorted(set(found), key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def test_the_walk_finds_the_engines_errors():
    names = {cls.__name__ for cls in engine_exception_classes()}
    assert {"ConfigError", "AudioError", "DatasetError", "TrainingAlreadyRunning", "RunError"} <= names


@pytest.mark.parametrize("cls", engine_exception_classes(), ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_every_engine_error_is_a_timbre_error(cls):
    assert issubclass(cls, TimbreError), f"{cls.__module__}.{cls.__name__} does not derive from TimbreError"


def test_engine_errors_keep_their_builtin_base():
    """``except ValueError`` around an engine call still catches what it caught before."""
    from engine.config import ConfigError
    from engine.training.process import TrainingAlreadyRunning

    assert issubclass(ConfigError, ValueError) and issubclass(TrainingAlreadyRunning, RuntimeError)
