"""Child process of ``bench/train_throughput.py`` for our own training loop.

``python -m bench.engine_loop cache TRAIN_YAML RESULT_JSON``
    computes the dataset's cached features (DVAE codes, conditioning mels) exactly as the loop's
    start does (``data.prepare_samples`` with a ``FeatureExtractor``) and times it: the one-off
    cost that our loop pays once per dataset and coqui's recipe pays on every step.
``python -m bench.engine_loop train TRAIN_YAML RESULT_JSON``
    runs ``python -m engine train TRAIN_YAML`` (the same ``engine.cli.main``) in this process and
    then records what only this process can see: torch's thread count and, on CUDA, the peak GPU
    memory (``torch.cuda.max_memory_allocated``), which the loop does not write to metrics.jsonl.

The result is a JSON object; the step timestamps come from the run's metrics.jsonl.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch


def cache_features(config_path: Path) -> dict:
    """Fill ``datasets/<voice>/cache/`` for train.csv; returns timings and counts."""
    from engine import models
    from engine.config import TrainConfig
    from engine.training import data

    cfg = TrainConfig.load(config_path)
    device = torch.device("cuda" if cfg.gpus != 0 and torch.cuda.is_available() else "cpu")
    base = models.require_base_model(cfg.base_model_dir())
    tokenizer = models.load_xtts(base, device="cpu", eval=False).tokenizer
    started = time.perf_counter()
    features = data.FeatureExtractor(base, cfg.dataset_dir() / "cache", device=device)
    samples, problems = data.prepare_samples(
        data.read_metadata(cfg.dataset_dir() / "train.csv"), tokenizer, features, cfg.language,
        cfg.min_audio_seconds, cfg.max_audio_seconds, cfg.max_text_tokens, log=lambda _: None,
    )  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {
        "seconds": time.perf_counter() - started,
        "clips": len(samples),
        "computed": features.misses,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] not in ("cache", "train"):
        print("usage: python -m bench.engine_loop cache|train TRAIN_YAML RESULT_JSON", file=sys.stderr)
        return 2
    what, config_path, result_path = argv[0], Path(argv[1]), Path(argv[2])
    result: dict = {"torch_threads": torch.get_num_threads()}
    if what == "cache":
        result.update(cache_features(config_path))
        code = 0
    else:
        from engine.cli import main as engine_main

        code = engine_main(["train", str(config_path)])
    result["exit_code"] = code
    result["torch_threads_after"] = torch.get_num_threads()
    result["rss_self_max_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        result["cuda_max_reserved_bytes"] = torch.cuda.max_memory_reserved()
    result_path.write_text(json.dumps(result, indent=1) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
