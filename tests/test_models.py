"""Base-model files: status, the licence-gated download (with the hub faked: tests never
download), the tiny model's layout and loading it."""

from __future__ import annotations

import pytest

from engine import models


def test_status_names_missing_files_and_require_raises(tmp_path):
    status = models.base_model_status(tmp_path)
    assert not status.ready and set(status.missing) == set(models.REQUIRED_FILES)
    (tmp_path / "config.json").write_text("{}")
    assert "config.json" not in models.base_model_status(tmp_path).missing
    with pytest.raises(models.BaseModelError, match="model.pth"):
        models.require_base_model(tmp_path)


def test_download_needs_the_licence_and_fetches_all_six_files(tmp_path, monkeypatch):
    import huggingface_hub

    fetched = []

    def fake_download(repo_id, filename, **kwargs):
        assert repo_id == models.HUB_REPO
        fetched.append(filename)
        source = tmp_path / "cache" / filename
        source.parent.mkdir(exist_ok=True)
        source.write_bytes(filename.encode())
        return str(source)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    target = tmp_path / "models" / "xtts-v2"
    with pytest.raises(PermissionError, match="License"):
        models.download_base_model(target, accept_license=False)
    assert not fetched
    (target).mkdir(parents=True)
    (target / "vocab.json").write_text("kept")  # a file already there is kept, not fetched again
    steps = []
    models.download_base_model(
        target, accept_license=True, progress=lambda f, d: steps.append((f, d)), log=lambda m: None
    )
    assert sorted(fetched) == sorted(set(models.ALL_FILES) - {"vocab.json"})
    assert (target / "vocab.json").read_text() == "kept"
    assert all((target / name).read_bytes() == name.encode() for name in fetched)
    assert steps[-1] == (1.0, "done") and len(steps) == len(models.ALL_FILES) + 1
    assert not list(target.glob(".*.part")), "no partial files left behind"
    assert models.base_model_status(target).ready


def test_tiny_model_has_the_xtts_layout_and_loads(tiny_model):
    assert models.base_model_status(tiny_model).ready
    xtts = models.load_xtts(tiny_model, eval=True)
    assert xtts.gpt.layers == 2 and xtts.gpt.model_dim == 64
    tokens = xtts.tokenizer.encode("hello world", "en")
    assert tokens and xtts.tokenizer.tokenizer.token_to_id("[UNK]") not in tokens
    assert models.load_mel_stats(tiny_model).shape == (80,)
    assert not models.load_dvae(tiny_model).training
