"""The F5-TTS v1 family (engine/models/f5/): folder layout, training data and loss, freezing,
synthesis, export loadable by f5_tts's own API, import. Tiny random model, CPU, espeak-ng speech."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.models import f5
from engine.models.f5 import export, files, generate, train

TEXTS = [
    "The cat sat on the warm mat.",
    "A small boat drifted down the river.",
    "Please bring me a glass of water.",
    "He painted the fence green.",
]
SNOWMAN_TEXT = "The snowman \u2603 smiled."  # ☃ is in no F5 vocabulary


@dataclass
class Config:
    """The TrainConfig fields the F5 trainee reads."""

    root: Path
    init_weights: str = ""
    freeze: list[str] = field(default_factory=list)
    language: str = "en"
    min_audio_seconds: float = 0.3
    max_audio_seconds: float = 30.0

    def dataset_dir(self) -> Path:
        return self.root


@pytest.fixture(scope="module")
def tiny_f5(tmp_path_factory) -> Path:
    return f5.FAMILY.write_random_model(tmp_path_factory.mktemp("tiny-f5"), "tiny", seed=0)


@pytest.fixture(scope="module")
def f5_dataset(tmp_path_factory, espeak_wav) -> Path:
    """datasets/<voice>/-like folder: 4 training clips + 1 with an unknown character, 1 validation."""
    root = tmp_path_factory.mktemp("f5-dataset")
    rows = []
    for i, text in enumerate(TEXTS):
        espeak_wav(text, root / "wavs" / f"clip{i}.wav", speed=170)
        rows.append(f"wavs/clip{i}.wav|{text}|anna")
    rows.append(f"wavs/clip0.wav|{SNOWMAN_TEXT}|anna")
    header = "audio_file|text|speaker_name\n"
    (root / "train.csv").write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    (root / "validation.csv").write_text(header + rows[3] + "\n", encoding="utf-8")
    return root


def test_random_model_layout_detect_and_registry(tiny_f5, tiny_model, tmp_path):
    from engine.models import family_of, get_family

    assert get_family("f5") is f5.FAMILY and f5.FAMILY.name == "f5"
    assert f5.FAMILY.output_sample_rate == 24000 and f5.FAMILY.loss_terms == ("loss_flow",)
    assert f5.FAMILY.detect(tiny_f5) and f5.FAMILY.missing_files(tiny_f5) == []
    assert family_of(tiny_f5) == "f5"
    assert not f5.FAMILY.detect(tiny_model) and family_of(tiny_model) == "xtts"
    assert not f5.FAMILY.detect(tmp_path) and not f5.FAMILY.detect(tmp_path / "absent")
    assert f5.FAMILY.missing_files(tmp_path) == ["model.safetensors", "vocab.txt", *files.VOCODER_FILES]
    marker = json.loads((tiny_f5 / files.RANDOM_MODEL_MARKER).read_text())
    assert marker["size"] == "tiny" and marker["arch"]["dim"] == 64 and marker["seed"] == 0
    vocab = files.read_vocab(tiny_f5)
    assert vocab[" "] == 0 and {"é", "ß", "ç", "ñ", "?", "7", "ni3", "hao3"} <= set(vocab)
    with pytest.raises(ValueError, match="size"):
        f5.FAMILY.write_random_model(tmp_path / "bad", "huge")
    # the hub's layout: model_<step>.safetensors and no model.yaml (arch from F5TTS_v1_Base.yaml)
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "vocab.txt").write_text(" \na\n")
    (hub / "model_1250000.safetensors").write_bytes(b"")
    assert f5.FAMILY.detect(hub) and files.weights_file(hub).name == "model_1250000.safetensors"
    assert files.model_config(hub)["arch"]["dim"] == 1024
    # importing the family and detecting load neither f5_tts nor vocos (detect runs for every folder)
    code = (
        "import sys; from engine.models import family_of; family_of(sys.argv[1]); "
        "assert not [m for m in sys.modules if m.startswith(('f5_tts', 'vocos'))]"
    )
    subprocess.run([sys.executable, "-c", code, str(tiny_f5)], check=True, cwd=Path(__file__).parent.parent)


def test_trainee_samples_cache_collate_loss_and_step(tiny_f5, f5_dataset):
    cfg = Config(f5_dataset)
    trainee = f5.FAMILY.trainee(cfg, tiny_f5, torch.device("cpu"), log=lambda line: None)
    assert len(trainee.train_set) == 4 and len(trainee.val_set) == 1
    assert len(trainee.problems) == 1 and "train.csv:6" in trainee.problems[0] and "\u2603" in trainee.problems[0]
    sample = trainee.train_set[0]
    assert sample.mel.dtype == torch.float32 and sample.mel.shape == (sample.frames, 100)
    assert sample.frames == sample.samples // 256 + 1 and 1.0 < sample.seconds < 5.0
    vocab = files.read_vocab(tiny_f5)
    assert sample.text.dtype == torch.long
    assert sample.text.tolist() == [vocab[t] for t in train.text_tokens(sample.clip.text)]
    # validation.csv's clip is training clip 3: the cache is keyed by the audio's content
    assert "1 hits, 4 computed" in trainee.info, trainee.info
    again = f5.FAMILY.trainee(cfg, tiny_f5, torch.device("cpu"), log=lambda line: None)
    assert "5 hits, 0 computed" in again.info, again.info
    assert torch.equal(again.train_set[0].mel, sample.mel)

    batch = trainee.collate(trainee.train_set[:3], None)
    n_max = max(s.frames for s in trainee.train_set[:3])
    t_max = max(s.text.numel() for s in trainee.train_set[:3])
    assert batch["mel"].shape == (3, n_max, 100) and batch["mel"].dtype == torch.float32
    assert batch["mel_lengths"].tolist() == [s.frames for s in trainee.train_set[:3]]
    assert batch["text"].shape == (3, t_max) and batch["text"].dtype == torch.long
    shortest = min(range(3), key=lambda i: trainee.train_set[i].text.numel())
    if trainee.train_set[shortest].text.numel() < t_max:
        assert batch["text"][shortest, -1] == train.TEXT_PAD
    assert all(torch.equal(batch[k], trainee.collate(trainee.train_set[:3], None)[k]) for k in batch)

    module = trainee.module
    torch.manual_seed(1)
    first = trainee.losses(module, batch)
    torch.manual_seed(1)
    second = trainee.losses(module, batch)
    assert set(first) == {"loss", "loss_flow"} and torch.isfinite(first["loss"])
    assert first["loss"].item() == second["loss"].item(), "the loss is a function of torch's RNG state"
    before = {k: v.clone() for k, v in module.state_dict().items()}
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.0)  # moves by gradients only
    first["loss"].backward()
    optimizer.step()
    after = module.state_dict()
    for key in ("transformer.proj_out.weight", "transformer.input_embed.proj.weight"):
        assert not torch.equal(before[key], after[key]), key

    # init_weights: a safetensors state_dict of the trained CFM, loaded strictly
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in after.items()}, str(f5_dataset / "init.safetensors"))
    cfg.init_weights = str(f5_dataset / "init.safetensors")
    resumed = f5.FAMILY.trainee(cfg, tiny_f5, torch.device("cpu"), log=lambda line: None).module
    assert torch.equal(resumed.transformer.proj_out.weight, after["transformer.proj_out.weight"])


def test_freeze_groups_stay_unchanged(tiny_f5, f5_dataset):
    trainee = f5.FAMILY.trainee(Config(f5_dataset), tiny_f5, torch.device("cpu"), log=lambda line: None)
    assert tuple(trainee.freeze_groups) == f5.FAMILY.freeze_group_names
    module = trainee.module
    frozen = [m for name in ("text_embedding", "transformer_blocks") for m in trainee.freeze_groups[name]]
    for m in frozen:  # what the loop does: no gradients, eval mode, out of the optimizer
        m.requires_grad_(False)
    module.train()
    for m in frozen:
        m.eval()
    frozen_state = {
        f"{i}.{k}": v.clone() for i, m in enumerate(frozen) for k, v in m.state_dict(keep_vars=False).items()
    }
    frozen_buffers = {f"{i}.{k}": v.clone() for i, m in enumerate(frozen) for k, v in m.named_buffers()}
    others = {k: v.clone() for k, v in module.named_parameters() if v.requires_grad}
    assert frozen_state and others
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)
    for step in range(3):
        torch.manual_seed(step)
        batch = trainee.collate(trainee.train_set[step : step + 2], None)
        optimizer.zero_grad()
        trainee.losses(module, batch)["loss"].backward()
        optimizer.step()
    for i, m in enumerate(frozen):
        for k, v in m.state_dict().items():
            assert torch.equal(v, frozen_state[f"{i}.{k}"]), f"frozen {k} changed"
        for k, v in m.named_buffers():
            assert torch.equal(v, frozen_buffers[f"{i}.{k}"]), f"frozen buffer {k} changed"
    changed = [k for k, v in module.named_parameters() if v.requires_grad and not torch.equal(v, others[k])]
    assert any("input_embed" in k for k in changed) and any("proj_out" in k for k in changed)
    assert any("time_embed" in k for k in changed)


def test_synthesize_is_seeded_and_scales_with_text(tiny_f5, f5_dataset):
    reference = [(f5_dataset / "wavs" / "clip0.wav", TEXTS[0])]
    kwargs = dict(nfe_step=8, log=lambda line: None)
    audio, rate = generate.synthesize(tiny_f5, None, reference, "Hello there, how are you?", seed=3, **kwargs)
    assert rate == 24000 and audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()
    same, _ = generate.synthesize(tiny_f5, None, reference, "Hello there, how are you?", seed=3, **kwargs)
    assert np.array_equal(audio, same)
    other, _ = generate.synthesize(tiny_f5, None, reference, "Hello there, how are you?", seed=4, **kwargs)
    assert not np.array_equal(audio, other)
    ref_seconds = generate.prepare_reference(reference[0][0], log=lambda line: None).numel() / rate
    text_share = len(b"Hello there, how are you?") / len((TEXTS[0] + ".  ").encode())
    assert 0.5 * ref_seconds * text_share < len(audio) / rate < 2.0 * ref_seconds * text_share + 0.5
    longer, _ = generate.synthesize(
        tiny_f5, None, reference, "Hello there, how are you? The weather is fine today.", seed=3, **kwargs
    )
    assert len(longer) > 1.5 * len(audio)
    with pytest.raises(generate.F5GenerationError, match="no text"):
        generate.synthesize(tiny_f5, None, reference, "  ", **kwargs)
    with pytest.raises(generate.F5GenerationError, match="transcript"):
        generate.synthesize(tiny_f5, None, [(reference[0][0], "")], "Hello.", **kwargs)
    assert generate.split_text("One. Two! Three?", 6) == ["One.", "Two!", "Three?"]
    assert generate.split_text("One. Two! Three?", 100) == ["One. Two! Three?"]


def test_export_loads_with_f5_tts_api_then_imports(tiny_f5, f5_dataset, tmp_path):
    trained = files.load_cfm(tiny_f5)
    with torch.no_grad():
        trained.transformer.proj_out.bias.add_(0.5)  # "fine-tuned" weights differ from the base
    weights = trained.state_dict()
    out = export.export_model(tiny_f5, weights, tmp_path / "exports" / "anna.zip", "# anna\n", ema=False)
    with zipfile.ZipFile(out) as archive:
        assert set(archive.namelist()) == set(export.MEMBERS)
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(out).extractall(unpacked)

    from f5_tts.infer.utils_infer import infer_batch_process, load_model, load_vocoder
    from f5_tts.model import DiT
    from omegaconf import OmegaConf

    arch = OmegaConf.load(unpacked / "model.yaml").model.arch
    model = load_model(
        DiT, arch, str(unpacked / "model.safetensors"), vocab_file=str(unpacked / "vocab.txt"), device="cpu"
    )
    assert torch.equal(model.transformer.proj_out.bias, weights["transformer.proj_out.bias"])
    vocoder = load_vocoder("vocos", is_local=True, local_path=str(unpacked / "vocoder"), device="cpu")
    wav = generate.prepare_reference(f5_dataset / "wavs" / "clip1.wav", log=lambda line: None)
    audio, rate, _mel = next(
        infer_batch_process((wav.unsqueeze(0), 24000), TEXTS[1] + " ", ["Good morning."], model, vocoder,
                            nfe_step=4, progress=None, device="cpu")
    )  # fmt: skip
    assert rate == 24000 and audio.ndim == 1 and len(audio) > 2400 and np.isfinite(audio).all()

    imported = export.import_model(out, tmp_path / "imported" / "anna")
    assert f5.FAMILY.detect(imported) and f5.FAMILY.missing_files(imported) == []
    assert torch.equal(files.load_cfm(imported).transformer.proj_out.bias, weights["transformer.proj_out.bias"])
    with pytest.raises(FileExistsError):
        export.import_model(out, imported)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../escape.txt", "x")
    with pytest.raises(export.F5ExportError, match="unsafe"):
        export.import_model(evil, tmp_path / "evil")
    assert not (tmp_path / "escape.txt").exists()
