"""Where Whisper runs: which backend and device a transcription uses (:func:`runtime`), the
CUDA 12 libraries faster-whisper needs on a GPU (:func:`preload_cuda12_libraries`), and whether
a model is on this machine without a download (:func:`is_model_local`). Used by
:mod:`engine.speech.transcribe`, which re-exports these names.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np

from engine import paths

logger = logging.getLogger("engine.speech.transcribe")


def is_model_local(backend: str, model: str | None) -> bool:
    """Whether ``model`` (:func:`engine.speech.transcribe.resolve_model`) can be loaded without a download: a path that
    exists, or a name already in ``models/<backend>/`` (faster-whisper: the hub cache there,
    checked with ``local_files_only``; openai-whisper: ``models/whisper/<name>.pt``)."""
    from engine.speech import transcribe

    name = transcribe.resolve_model(backend, model)
    if Path(name).exists():
        return True
    if backend == "faster-whisper":
        from faster_whisper.utils import download_model

        try:
            download_model(name, local_files_only=True, cache_dir=str(paths.models_dir() / "faster-whisper"))
        except Exception:  # noqa: BLE001 - huggingface_hub raises several kinds for "not cached"
            return False
        return True
    import whisper

    url = whisper._MODELS.get(name)
    return url is not None and (paths.models_dir() / "whisper" / os.path.basename(url)).is_file()


#: The CUDA 12 libraries CTranslate2 4.x (faster-whisper's engine) loads, as the
#: ``nvidia-cublas-cu12`` wheel installs them (``nvidia/cublas/lib/``). torch 2.11 from PyPI brings
#: CUDA 13, whose libraries CTranslate2 cannot use; ``start.sh`` installs that wheel on Linux
#: machines with an NVIDIA GPU (requirements-gpu.txt).
CUDA12_LIBRARIES = ("libcublasLt.so.12", "libcublas.so.12")


@functools.lru_cache(maxsize=1)
def preload_cuda12_libraries() -> list[str]:
    """Load the CUDA 12 cuBLAS libraries of the ``nvidia-cublas-cu12`` wheel into this process
    (``RTLD_GLOBAL``), so that CTranslate2 finds them when it opens them by name; returns the
    paths loaded ([] when the wheel is not installed or not on Linux). Loaded once."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return []
    try:
        import nvidia.cublas
    except ImportError:
        return []
    loaded = []
    for folder in [Path(p) / "lib" for p in getattr(nvidia.cublas, "__path__", [])]:
        for name in CUDA12_LIBRARIES:
            path = folder / name
            if path.is_file():
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
                loaded.append(str(path))
    return loaded


@functools.lru_cache(maxsize=16)
def runtime(backend: str, model: str, device: str = "auto") -> tuple[str, str, str]:
    """Which ``(backend, device)`` transcribes with ``backend``/``model`` asked on ``device``,
    and why, in a sentence for the user (decided once per process and model).

    On ``"auto"`` with a GPU: faster-whisper runs on it when CTranslate2 can load its CUDA 12
    libraries (after :func:`preload_cuda12_libraries`; tried with one second of silence). When it
    cannot, openai-whisper runs the same model on the GPU through torch, for a model name
    openai-whisper knows (a CTranslate2 folder it cannot read), rather than faster-whisper on the
    CPU; failing that, faster-whisper on the CPU. openai-whisper uses the GPU whenever torch sees
    one. Raises TranscriptionError for an unknown backend.
    """
    from engine.speech import transcribe

    transcribe.resolve_model(backend, None)  # raises TranscriptionError for an unknown backend
    if device != "auto":
        return backend, device, f"{backend} on {'the GPU' if device == 'cuda' else device}"
    import torch

    if backend == "openai-whisper":
        where = "cuda" if torch.cuda.is_available() else "cpu"
        return backend, where, f"openai-whisper on the {'GPU' if where == 'cuda' else 'CPU'}"
    import ctranslate2

    if ctranslate2.get_cuda_device_count() == 0:
        return backend, "cpu", "faster-whisper on the CPU (no GPU found by CTranslate2)"
    preload_cuda12_libraries()
    try:
        probe = transcribe._faster_whisper_model(model, "cuda")
        list(probe.transcribe(np.zeros(transcribe.SAMPLE_RATE, dtype=np.float32), language="en")[0])
        return backend, "cuda", "faster-whisper on the GPU (float16)"
    except (RuntimeError, OSError, ValueError) as error:
        reason = f"faster-whisper cannot use the GPU ({error})"
    import whisper

    if torch.cuda.is_available() and model in whisper._MODELS:
        logger.warning("%s; transcribing with openai-whisper %s on the GPU instead", reason, model)
        return "openai-whisper", "cuda", f"openai-whisper on the GPU: {reason}"
    logger.warning("%s; transcribing on the CPU", reason)
    return backend, "cpu", f"faster-whisper on the CPU: {reason}"
