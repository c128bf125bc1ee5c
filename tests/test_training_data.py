"""The batch plan and the feature cache (engine/training/data.py)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from engine.training import data


def durations(n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(1.0, 11.5) for _ in range(n)]


def test_epoch_batches_cover_every_clip_are_seeded_and_reshuffle_each_epoch():
    d = durations(50)
    first = data.epoch_batches(d, 8, seed=3, epoch=0)
    assert len(first) == 7 and all(len(b) == 8 for b in first)
    seen = [i for b in first for i in b]
    assert set(seen) == set(range(50)), "every clip at least once per epoch"
    assert len(seen) - len(set(seen)) == 6, "only the padding to a whole batch repeats"
    assert first == data.epoch_batches(d, 8, seed=3, epoch=0), "same seed and epoch, same plan"
    assert first != data.epoch_batches(d, 8, seed=3, epoch=1), "reshuffled every epoch"
    assert first != data.epoch_batches(d, 8, seed=4, epoch=0)


def test_ranks_and_accumulation_steps_get_disjoint_slices_of_each_global_batch():
    batch = list(range(100, 116))  # global batch 16 = 2 accumulation x 2 ranks x 4 clips
    slices = [data.micro_batch(batch, a, r, world_size=2, micro_size=4) for a in range(2) for r in range(2)]
    assert all(len(s) == 4 for s in slices)
    assert sorted(i for s in slices for i in s) == batch
    # one process accumulating 4 micro-batches takes the same slices in the same order
    single = [data.micro_batch(batch, a, 0, world_size=1, micro_size=4) for a in range(4)]
    assert single == slices


def fake_samples(lengths: list[float]) -> list[data.Sample]:
    samples = []
    for seconds in lengths:
        n = int(seconds * 22050)
        samples.append(
            data.Sample(data.Clip(Path("x.wav"), "x", "t:1"), torch.zeros(3, dtype=torch.long),
                        torch.zeros(-(-n // 1024), dtype=torch.long), torch.zeros(80, n // 256 + 1), n)
        )  # fmt: skip
    return samples


def test_bucketing_pads_less_than_random_batches():
    d = durations(400, seed=1)
    samples = fake_samples(d)
    bucketed = data.epoch_batches(d, 8, seed=0, epoch=0)
    rng = random.Random(0)
    order = list(range(len(d)))
    rng.shuffle(order)
    unbucketed = [order[i : i + 8] for i in range(0, len(order), 8)]
    pad = lambda batches: sum(data.padding_fraction([samples[i] for i in b]) for b in batches) / len(batches)  # noqa: E731
    assert pad(bucketed) < 0.5 * pad(unbucketed)
    # and the buckets are shuffled, not sorted by length (sorted order gave periodic loss spikes)
    means = [sum(d[i] for i in b) / len(b) for b in bucketed]
    assert means != sorted(means) and means != sorted(means, reverse=True)


def test_collate_shapes_and_reproducible_validation_slice():
    samples = fake_samples([3.0, 5.0, 8.0])
    batch = data.collate(samples, rng=None)
    assert batch["text_inputs"].shape == (3, 3)
    assert batch["audio_codes"].shape == (3, -(-int(8.0 * 22050) // 1024))
    assert batch["cond_mels"].shape[:3] == (3, 1, 80)
    assert torch.equal(batch["cond_mels"], data.collate(samples, rng=None)["cond_mels"])
    a = data.collate(samples, rng=random.Random(1))["cond_mels"]
    b = data.collate(samples, rng=random.Random(1))["cond_mels"]
    assert torch.equal(a, b)


def test_feature_cache_is_keyed_by_audio_and_model_files(dataset_home, tiny_model, tmp_path):
    wav = dataset_home / "datasets" / "anna" / "wavs" / "clip0.wav"
    extractor = data.FeatureExtractor(tiny_model, tmp_path / "cache")
    first = extractor.features(wav)
    again = data.FeatureExtractor(tiny_model, tmp_path / "cache").features(wav)
    assert extractor.misses == 1
    assert torch.equal(first["codes"], again["codes"]) and torch.equal(first["style_mel"], again["style_mel"])
    assert first["codes"].numel() == -(-first["wav_length"] // 1024)
    other_model = tmp_path / "other"
    other_model.mkdir()
    for f in tiny_model.iterdir():
        if f.is_file() and not f.name.startswith("."):
            (other_model / f.name).symlink_to(f)
    (other_model / "mel_stats.pth").unlink()
    torch.save(torch.ones(80) * 2, other_model / "mel_stats.pth")
    assert data.model_cache_key(other_model) != data.model_cache_key(tiny_model)
