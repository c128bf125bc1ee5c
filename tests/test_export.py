"""engine.generate.export: a fine-tune packed into a zip that coqui-tts loads exactly as a user would,
and that zip imported back as a model the Generate tab can select."""

from __future__ import annotations

import zipfile

import pytest
import torch
from generate_helpers import copy_home, fake_run, perturbed_gpt
from safetensors.torch import load_file

from engine import models, paths
from engine.generate import conditioning, export
from engine.generate import synthesis as generate
from engine.generate.synthesis import GenerationSettings, Synthesizer


@pytest.fixture
def run_home(dataset_home, tiny_model, tmp_path, monkeypatch):
    """A TIMBRE_HOME of its own with voice anna, its dataset and a finished run "ft" (steps 2, 4)."""
    home = copy_home(dataset_home, tmp_path / "home")
    monkeypatch.setenv("TIMBRE_HOME", str(home))
    fake_run(home, tiny_model)
    return home


def test_export_loads_with_coquis_own_api_and_speaks(run_home, tiny_model, tmp_path, counted_latents):
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    refs = ["voices/anna/reference.wav", "datasets/anna/wavs/clip2.wav"]
    synth = Synthesizer(tiny_model, device="cpu")
    zip_path = export.export_model("anna", "ft", "latest", references=refs, synthesizer=synth)
    assert zip_path == paths.output_dir("anna") / "exports" / "anna-ft-step-0000004.zip"
    assert counted_latents["n"] == 1
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        card = archive.read("MODEL_CARD.md").decode()
        archive.extractall(tmp_path / "unzipped")
    assert {"config.json", "vocab.json", "model.pth", "dvae.pth", "mel_stats.pth", "speakers_xtts.pth",
            "MODEL_CARD.md", "timbre.json", "references/recordings/reference.wav",
            "references/clips/clip2.wav"} == names  # fmt: skip
    assert not list(zip_path.parent.glob(".export-*")), "the staging folder is removed"

    # The model card: base model and licence, training settings, dataset size, final metrics.
    for expected in ("Coqui Public Model License", "non-commercial", "random test model with the XTTS-v2 layout", "step-0000004",
                     "| Steps | 4 of 4 (finished) |", "epochs: 2", "seed: 7",
                     "| Dataset (at export) | 5 training + 1 validation clips, 15.4 s of speech |",
                     "| Final training loss | text CE 5.0000, mel CE 4.0000, loss 4.0100 (step 4) |",
                     "| Final validation loss | text CE 5.5000, mel CE 4.5000, loss 4.5150 (step 4) |",
                     'speaker="anna"', "references/clips/clip2.wav"):  # fmt: skip
        assert expected in card, expected

    # Loaded exactly as coqui documents it.
    folder = tmp_path / "unzipped"
    config = XttsConfig()
    config.load_json(str(folder / "config.json"))
    model = Xtts.init_from_config(config)
    model.load_checkpoint(config, checkpoint_dir=str(folder), eval=True)
    trained = load_file(str(paths.run_dir("anna", "ft") / "checkpoints/step-0000004/model.safetensors"))
    state = model.gpt.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.items())
    assert all(torch.equal(state[k], v) for k, v in perturbed_gpt(tiny_model, seed=4).items())
    assert torch.equal(model.mel_stats, models.load_mel_stats(tiny_model))

    # The voice's latents are those Timbre computed under the fine-tuned GPT (cached on disk).
    speaker = model.speaker_manager.speakers["anna"]
    ours = synth.conditioning([paths.home() / r for r in refs])
    assert torch.equal(speaker["gpt_cond_latent"], ours[0].cpu())
    assert torch.equal(speaker["speaker_embedding"], ours[1].cpu())
    torch.manual_seed(0)
    out = model.synthesize("Hello from the export.", speaker="anna", language="en", max_new_tokens=10)
    assert out["wav"].size > 5000 and abs(out["wav"]).max() > 0


def test_import_makes_the_export_selectable_without_reloading(run_home, tiny_model, tmp_path):
    synth = Synthesizer(tiny_model, device="cpu")
    zip_path = export.export_model("anna", "ft", "step-0000002", synthesizer=synth)
    folder = export.import_model(zip_path, "anna ft")
    assert folder == paths.models_dir() / "imported" / "anna ft" and (folder / "model.pth").is_file()
    assert generate.list_imported_models() == ["anna ft"]
    model = synth.model
    path = generate.generate_speech(
        "anna", "Imported.", run="imported:anna ft", base_model=tiny_model, synthesizer=synth,
        settings=GenerationSettings(seed=1, max_seconds=0.3),
    )  # fmt: skip
    assert synth.model is model and synth.loads == 1  # only the GPT was swapped in
    assert all(torch.equal(model.gpt.state_dict()[k], v) for k, v in perturbed_gpt(tiny_model, seed=2).items())
    assert generate.read_output("anna", path.name)["run"] == "imported:anna ft"

    with pytest.raises(FileExistsError, match="anna ft"):
        export.import_model(zip_path, "anna ft")
    with pytest.raises(paths.InvalidNameError):
        export.import_model(zip_path, "../evil")
    assert not list((paths.models_dir() / "imported").glob(".*")), "no staging folder is left behind"


def test_import_refuses_bad_zips_naming_the_file(run_home, tmp_path):
    not_zip = tmp_path / "notes.zip"
    not_zip.write_text("hello")
    with pytest.raises(export.ExportError, match="notes.zip: not a readable zip"):
        export.import_model(not_zip, "a")
    slip = tmp_path / "slip.zip"
    with zipfile.ZipFile(slip, "w") as archive:
        archive.writestr("../../evil.txt", "x")
    with pytest.raises(export.ExportError, match="slip.zip: unsafe member"):
        export.import_model(slip, "b")
    partial = tmp_path / "partial.zip"
    with zipfile.ZipFile(partial, "w") as archive:
        archive.writestr("voice/config.json", "{}")
    with pytest.raises(export.ExportError, match="partial.zip: not an XTTS-v2 model export, missing model.pth"):
        export.import_model(partial, "c")
    assert generate.list_imported_models() == []


def test_only_a_run_can_be_exported(run_home):
    for model in (generate.BASE_MODEL, "imported:x", ""):
        with pytest.raises(export.ExportError, match="choose a run"):
            export.export_model("anna", model)
    with pytest.raises(generate.GenerationError, match="no checkpoint step-0000009"):
        export.export_model("anna", "ft", "step-0000009")
    with pytest.raises(conditioning.ConditioningError, match="voices/bob/x.wav"):
        export.export_model("anna", "ft", references=["voices/bob/x.wav"])


@pytest.fixture
def counted_latents(monkeypatch):
    counts = {"n": 0}
    original = conditioning.compute_latents

    def counting(*args, **kwargs):
        counts["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(conditioning, "compute_latents", counting)
    return counts
