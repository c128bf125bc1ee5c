"""engine.config.check_against_dataset and engine.hardware: warnings and batch suggestions."""

from __future__ import annotations

import pytest

from engine import hardware
from engine.config import ConfigError, TrainConfig, check_against_dataset, count_dataset_clips
from engine.hardware import GpuMemory, suggest_batch, suggest_frames

GIB = 1024**3


def test_sensible_config_has_no_warnings():
    config = TrainConfig(epochs=10, batch_size=4, milestones=[5], validate_every=1, save_every=2)
    assert check_against_dataset(config, n_train_clips=200, n_validation_clips=20) == []


@pytest.mark.parametrize(
    ("settings", "clips", "expected"),
    [
        ({"batch_size": 8}, (5, 1), "larger than the 5 training clips"),
        ({"batch_size": 4}, (10, 1), "Only 3 optimizer step(s) per epoch"),
        ({}, (0, 0), "no training clips"),
        ({}, (100, 0), "No validation clips"),
        ({"validate_every": 0}, (100, 5), "validate_every is 0"),
        ({"epochs": 3, "validate_every": 4}, (100, 5), "validate_every 4 is more than the 3 epochs"),
        ({"epochs": 3, "save_every": 5}, (100, 5), "only the final checkpoint"),
        ({"milestones": [2], "gamma": 1.0}, (100, 5), "gamma is 1"),
        ({"max_steps": 10}, (100, 5), "before the first epoch ends (25 steps)"),
        ({"learning_rate": 1e-3}, (100, 5), "200x coqui's recipe"),
    ],
)
def test_warnings(settings, clips, expected):
    warnings = check_against_dataset(TrainConfig(**settings), *clips)
    assert any(expected in w for w in warnings), warnings


def test_hard_errors_stay_in_post_init():
    with pytest.raises(ConfigError, match="milestones: must lie within 1..9"):
        TrainConfig(epochs=10, milestones=[10])
    with pytest.raises(ConfigError, match="divisible by gradient_accumulation x GPUs = 4: try 4 or 8"):
        TrainConfig(batch_size=6, gradient_accumulation=2, gpus=2)


def test_count_dataset_clips(tmp_path):
    assert count_dataset_clips(tmp_path) == (0, 0)
    (tmp_path / "train.csv").write_text("audio_file|text|speaker_name\na.wav|A.|x\nb.wav|B.|x\n\n")
    (tmp_path / "validation.csv").write_text("audio_file|text|speaker_name\nc.wav|C.|x\n")
    assert count_dataset_clips(tmp_path) == (2, 1)


def test_micro_batch_rule_of_thumb():
    assert hardware.micro_batch_for_memory(11.5) == 2  # a 12 GB card
    assert hardware.micro_batch_for_memory(15.5) == 3  # 16 GB: coqui's recipe uses 3
    assert hardware.micro_batch_for_memory(11.5, "bf16") == 3
    assert hardware.micro_batch_for_memory(4.0) == 1
    assert hardware.micro_batch_for_memory(140.0) == hardware.MAX_MICRO_BATCH


def test_suggest_batch():
    cpu = suggest_batch([], 100)
    assert (cpu.batch_size, cpu.gradient_accumulation, cpu.gpus) == (2, 1, 0) and "No GPU found" in cpu.reason
    small = suggest_batch([GpuMemory(0, "RTX 3060", int(11.5 * GIB), 12 * GIB)], 200)
    assert (small.batch_size, small.gradient_accumulation, small.gpus) == (8, 4, 1)
    assert "RTX 3060: 11.5 of 12.0 GiB free" in small.reason
    two = [GpuMemory(0, "H100", 70 * GIB, 80 * GIB), GpuMemory(1, "H100", 20 * GIB, 80 * GIB)]
    big = suggest_batch(two, 1000)
    assert (big.batch_size, big.gradient_accumulation, big.gpus) == (10, 1, 2)  # the fuller GPU decides: 5 each
    tiny_dataset = suggest_batch([GpuMemory(0, "A100", 70 * GIB, 80 * GIB)], 6)
    assert tiny_dataset.batch_size <= 3  # at least two steps per epoch
    for suggestion in (cpu, small, big, tiny_dataset):
        gpus = max(1, suggestion.gpus)
        assert suggestion.batch_size % (suggestion.gradient_accumulation * gpus) == 0


def test_suggest_frames_for_f5():
    cpu = suggest_frames([], "fp32")
    assert cpu.batch_frames == 3200 and "No GPU found" in cpu.reason
    card = [GpuMemory(0, "RTX 4090", int(22 * GIB), 24 * GIB)]
    rule_fp32, rule_bf16 = suggest_frames(card, "fp32"), suggest_frames(card, "bf16")
    assert rule_fp32.batch_frames == 4000 and rule_bf16.batch_frames == 8000  # (22 - 6) GiB x 250 / x 500
    assert "RTX 4090: 22.0 of 24.0 GiB free" in rule_bf16.reason and rule_bf16.gpus == 1
    # an earlier run measured 2 GiB static + 3 GiB per 30 s clip (2812.5 frames): 20 GiB / (3 / 2812.5)
    measured = suggest_frames(card, "bf16", {"static_gib": 2.0, "per_clip_gib": 3.0}, max_seconds=30.0)
    assert measured.batch_frames == 18700 and "measured" in measured.reason
    assert suggest_frames([GpuMemory(0, "small", 4 * GIB, 6 * GIB)], "fp32").batch_frames == 500  # the floor
    assert suggest_frames([GpuMemory(0, "H200", 140 * GIB, 141 * GIB)], "bf16").batch_frames == 38400  # the cap


def test_gpu_memory_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.gpu_memory() == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("keep_checkpoints: 1.5", "keep_checkpoints: must be a whole number (got 1.5)"),
        ("epochs: '3'", "epochs: must be a whole number (got '3')"),
        ("save_every: true", "save_every: must be a whole number (got True)"),
        ("learning_rate: .inf", "learning_rate: must be a finite number (got inf)"),
        ("gamma: .nan", "gamma: must be a finite number (got nan)"),
        ("milestones: [1.5]", "milestones: must be a list of whole numbers (got [1.5])"),
        ("gpus: [0, 1.0]", "gpus: must be a whole number or a list of whole numbers (got [0, 1.0])"),
        ("base_model: 5", "base_model: must be text (got 5)"),
        ("min_training_clips: 0", "min_training_clips: must be at least 1 (got 0)"),
    ],
)
def test_train_yaml_values_are_type_checked_naming_field_and_value(tmp_path, text, message):
    path = tmp_path / "train.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as caught:
        TrainConfig.load(path)
    assert str(caught.value) == f"{path}: {message}"


def test_the_same_checks_in_engine_config_and_the_form(timbre_home):
    from engine.cli import main
    from webui.tabs import training_form as tform

    assert main(["config", "anna", "r", "--learning-rate", "inf"]) == 1
    assert main(["config", "anna", "r", "--keep-checkpoints", "0"]) == 1
    assert not (timbre_home / "training" / "anna" / "r").exists()
    form = {f.name: tform.to_form_value(f.name, getattr(TrainConfig(), f.name)) for f in tform.form_fields()}
    with pytest.raises(ConfigError, match=r"keep_checkpoints: must be a whole number \(got 1.5\)"):
        tform.form_to_config({**form, "keep_checkpoints": 1.5}, "anna", "r")
    with pytest.raises(ConfigError, match=r"learning_rate: must be a finite number \(got inf\)"):
        tform.form_to_config({**form, "learning_rate": "inf"}, "anna", "r")
    assert TrainConfig(gamma=1).gamma == 1.0 and isinstance(TrainConfig(gamma=1).gamma, float)


def test_too_few_clips_is_warned_before_training_refuses():
    warnings = check_against_dataset(TrainConfig(batch_size=1), n_train_clips=1, n_validation_clips=1)
    assert any("only 1 training clip(s)" in w and "min_training_clips = 4" in w for w in warnings), warnings
    assert not any("min_training_clips" in w for w in check_against_dataset(TrainConfig(batch_size=1), 4, 1))


def test_suggest_batch_uses_what_a_run_measured_on_this_gpu(timbre_home, tiny_model):
    """engine.training.memory: a first step's record (static memory after the step, the peak
    during it) becomes the per-clip figure, scaled to the longest clip a run accepts, and the
    suggestion uses it in place of the rule of thumb."""
    from engine.training import memory

    entry = memory.record("RTX 3060", tiny_model, "bf16", "adamw8bit", True, static_bytes=2 * GIB,
                          peak_bytes=4 * GIB, micro_batch=2, longest_seconds=5.8, max_seconds=11.6)  # fmt: skip
    assert entry["static_gib"] == 2.0 and entry["per_clip_gib"] == 2.0  # (4 - 2) / 2 clips x 11.6 / 5.8
    assert memory.lookup("RTX 3060", tiny_model, "bf16", "adamw8bit", True) == entry
    assert memory.lookup("RTX 3060", tiny_model, "bf16", "adamw8bit", False) is None  # other settings
    assert memory.lookup("RTX 4090", tiny_model, "bf16", "adamw8bit", True) is None  # another GPU
    gpu = [GpuMemory(0, "RTX 3060", int(11.5 * GIB), 12 * GIB)]
    measured = suggest_batch(gpu, 200, "bf16", measured=entry)
    assert measured.batch_size == 8 and measured.batch_size // measured.gradient_accumulation == 4  # (11.5 - 2) / 2
    assert "measured on this GPU by an earlier run" in measured.reason
    assert "rule of thumb" in suggest_batch(gpu, 200, "bf16").reason
