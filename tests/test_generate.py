"""engine.generate.synthesis and engine.generate.conditioning with the tiny random model on CPU: references,
cached conditioning latents, switching weights without reloading, candidates, streaming,
the output history and re-using a past output's settings."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from generate_helpers import copy_home, fake_run, perturbed_gpt, tiny_gpt_state

from engine import models, paths
from engine.generate import conditioning
from engine.generate import synthesis as generate
from engine.generate.synthesis import GenerationError, GenerationSettings, Synthesizer
from engine.speech import audio as audio_io

SHORT = 0.5  # seconds of speech per sentence: keeps the HiFi-GAN decoder's CPU time small


@pytest.fixture
def gen_home(dataset_home, tmp_path, monkeypatch):
    """A TIMBRE_HOME of its own (a copy of dataset_home: voices/anna/, datasets/anna/)."""
    home = copy_home(dataset_home, tmp_path / "home")
    monkeypatch.setenv("TIMBRE_HOME", str(home))
    return home


@pytest.fixture
def counted(monkeypatch):
    """Counts of full model loads and of conditioning-latent computations."""
    counts = {"load_xtts": 0, "compute_latents": 0}
    for module, name in ((models, "load_xtts"), (conditioning, "compute_latents")):
        original = getattr(module, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)
    return counts


def gpt_equals(model, state: dict) -> bool:
    mine = model.gpt.state_dict()
    return all(torch.equal(mine[k].cpu(), v) for k, v in state.items())


def wav_samples(path) -> np.ndarray:
    return audio_io.load_audio(path, models.OUTPUT_SAMPLE_RATE, min_seconds=0, silence_dbfs=-200).numpy()


# --- references ------------------------------------------------------------------------------


def test_references_are_listed_resolved_and_checked(gen_home):
    refs = conditioning.list_references("anna")
    ids = [r.id for r in refs]
    assert ids[0] == "voices/anna/reference.wav" and refs[0].kind == conditioning.RECORDING
    assert ids[1:] == [f"datasets/anna/wavs/clip{i}.wav" for i in range(6)]
    assert refs[1].label == "clip0.wav (dataset clip)"
    assert [r.id for r in conditioning.resolve_references("anna", None)] == ["voices/anna/reference.wav"]
    chosen = conditioning.resolve_references("anna", [ids[2], ids[1], ids[2]])
    assert [r.id for r in chosen] == [ids[2], ids[1]]  # order kept, duplicates dropped
    with pytest.raises(conditioning.ConditioningError, match=r"\.\./voices/anna/reference\.wav"):
        conditioning.resolve_references("anna", ["../voices/anna/reference.wav"])
    shutil.rmtree(gen_home / "voices" / "anna")  # no recordings: the dataset clips are the default
    assert len(conditioning.resolve_references("anna", [])) == 6
    with pytest.raises(conditioning.ConditioningError, match="no reference audio"):
        conditioning.resolve_references("nobody", None)


# --- latents and model switching -------------------------------------------------------------


def test_second_generation_reuses_cached_latents(gen_home, tiny_model, counted):
    settings = GenerationSettings(seed=3, max_seconds=SHORT)
    synth = Synthesizer(tiny_model, device="cpu")
    first = generate.generate_speech("anna", "Hello there.", settings=settings, synthesizer=synth)
    assert counted["compute_latents"] == 1
    cache = list((gen_home / "outputs" / "anna" / conditioning.LATENTS_DIR).glob("*.pt"))
    assert len(cache) == 1
    second = generate.generate_speech("anna", "Hello there.", settings=settings, synthesizer=synth)
    assert counted == {"load_xtts": 1, "compute_latents": 1}  # neither reloaded nor recomputed
    np.testing.assert_array_equal(wav_samples(first), wav_samples(second))  # same seed, same speech

    # A new process (a new Synthesizer) reads the latents from disk instead of computing them.
    fresh = Synthesizer(tiny_model, device="cpu")
    fresh.load(generate.resolve_model("anna", None, base_model=tiny_model))
    refs = [r.path for r in conditioning.resolve_references("anna", None)]
    from_disk = fresh.conditioning(refs, cache_dir=cache[0].parent)
    assert counted["compute_latents"] == 1
    assert torch.equal(from_disk[0].cpu(), synth.conditioning(refs)[0].cpu())
    # Other references are a new key; so is another file with the same name but other contents.
    fresh.conditioning(refs + [gen_home / "datasets/anna/wavs/clip1.wav"], cache_dir=cache[0].parent)
    assert counted["compute_latents"] == 2
    shutil.copy(gen_home / "datasets/anna/wavs/clip2.wav", refs[0])
    fresh.conditioning(refs, cache_dir=cache[0].parent)
    assert counted["compute_latents"] == 3


def test_switching_weights_reloads_only_the_gpt(gen_home, tiny_model, counted):
    fake_run(gen_home, tiny_model)
    synth = Synthesizer(tiny_model, device="cpu")
    model = synth.load(generate.resolve_model("anna", generate.BASE_MODEL, base_model=tiny_model))
    base_latents = synth.conditioning([gen_home / "voices/anna/reference.wav"])[0].clone()
    for step in (4, 2):
        weights = generate.resolve_model("anna", "ft", f"step-{step:07d}", base_model=tiny_model)
        assert synth.load(weights) is model
        assert gpt_equals(model, perturbed_gpt(tiny_model, seed=step))
    latest = generate.resolve_model("anna", "ft", "latest", base_model=tiny_model)
    assert latest.checkpoint == "step-0000004" and latest.model == "ft"
    # The conditioning encoder is part of the GPT: fine-tuned weights give other latents.
    ft_latents = synth.conditioning([gen_home / "voices/anna/reference.wav"])[0]
    assert not torch.equal(ft_latents, base_latents)
    assert synth.load(generate.ModelWeights(tiny_model)) is model
    assert gpt_equals(model, tiny_gpt_state(tiny_model))

    # An imported model with the same decoder: only its GPT is loaded.
    imported = generate.imported_model_dir("same-decoder")
    shutil.copytree(tiny_model, imported)
    state = torch.load(tiny_model / "model.pth", weights_only=True)["model"]
    state |= {f"gpt.{k}": v for k, v in perturbed_gpt(tiny_model, seed=9).items()}
    torch.save({"model": state}, imported / "model.pth")
    assert generate.list_imported_models() == ["same-decoder"]
    weights = generate.resolve_model("anna", "imported:same-decoder")
    assert synth.load(weights) is model and gpt_equals(model, perturbed_gpt(tiny_model, seed=9))
    assert counted["load_xtts"] == 1 and synth.loads == 1

    # One whose decoder differs is loaded in full.
    other = generate.imported_model_dir("other-decoder")
    shutil.copytree(imported, other)
    state = {k: (v + 1 if k.startswith("hifigan_decoder.") and v.is_floating_point() else v) for k, v in state.items()}
    torch.save({"model": state}, other / "model.pth")
    assert synth.load(generate.resolve_model("anna", "imported:other-decoder")) is not model
    assert counted["load_xtts"] == 2 and synth.loads == 2

    with pytest.raises(GenerationError, match="no imported model"):
        generate.resolve_model("anna", "imported:missing")
    with pytest.raises(GenerationError, match="no checkpoint step-0000003"):
        generate.resolve_model("anna", "ft", "step-0000003")
    with pytest.raises(GenerationError, match="no run"):
        generate.resolve_model("anna", "nope")


# --- candidates, history, re-use, streaming --------------------------------------------------


def test_candidates_history_and_generating_again(gen_home, tiny_model):
    fake_run(gen_home, tiny_model)
    synth = Synthesizer(tiny_model, device="cpu")
    ref = "datasets/anna/wavs/clip3.wav"
    paths_out = generate.generate_candidates(
        "anna", "One. Two.", run="ft", checkpoint="latest", base_model=tiny_model, candidates=2,
        settings=GenerationSettings(seed=40, max_seconds=SHORT, temperature=0.6), references=[ref], synthesizer=synth,
    )  # fmt: skip
    assert len(paths_out) == 2 and all(p.is_file() for p in paths_out)
    metas = [json.loads(p.with_suffix(".json").read_text()) for p in paths_out]
    assert [m["settings"]["seed"] for m in metas] == [40, 41]
    assert [(m["candidate"], m["candidates"]) for m in metas] == [(1, 2), (2, 2)]
    assert metas[0]["run"] == "ft" and metas[0]["checkpoint"] == "step-0000004"
    assert metas[0]["references"] == [ref] and metas[0]["settings"]["temperature"] == 0.6
    assert not np.array_equal(wav_samples(paths_out[0]), wav_samples(paths_out[1]))

    history = generate.list_outputs("anna")
    assert {h["name"] for h in history} == {p.name for p in paths_out}
    past = generate.read_output("anna", paths_out[1].name)
    assert past["settings"]["seed"] == 41
    # "Generate again with these settings" gives the same speech.
    again = generate.generate_speech(
        "anna", past["text"], run=past["run"], checkpoint=past["checkpoint"], base_model=tiny_model,
        settings=generate.settings_of(past), references=past["references"], synthesizer=synth,
    )  # fmt: skip
    np.testing.assert_array_equal(wav_samples(again), wav_samples(paths_out[1]))
    for bad in ("../../voices/anna/reference.wav", "missing.wav", ".latents"):
        with pytest.raises(GenerationError):
            generate.read_output("anna", bad)


def test_streaming_yields_chunks_and_writes_the_whole(gen_home, tiny_model):
    synth = Synthesizer(tiny_model, device="cpu")
    settings = GenerationSettings(seed=5, max_seconds=1.5, split_sentences=False)
    stream = generate.stream_speech("anna", "Streaming speech.", base_model=tiny_model, settings=settings,
                                    synthesizer=synth, candidates=3)  # fmt: skip
    chunks = []
    with pytest.raises(StopIteration) as done:
        while True:
            chunks.append(next(stream))
    path = done.value.value
    assert len(chunks) >= 3, "32 codes in a first chunk of 8 and then chunks of 20 give three chunks"
    assert len(chunks[0]) < len(chunks[1]), "the first chunk is the small one: the first audio comes early"
    whole = torch.cat(chunks).numpy()
    np.testing.assert_allclose(wav_samples(path), np.clip(whole, -1, 1), atol=1 / 32767 + 1e-6)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["streamed"] is True and meta["settings"]["seed"] == 5
    assert 0 < meta["first_audio_seconds"] < meta["real_time_factor"] * meta["seconds"]
    assert (meta["candidate"], meta["candidates"]) == (1, 3)  # the first of three; the others follow


def test_generation_errors_name_the_problem(gen_home, tiny_model):
    synth = Synthesizer(tiny_model, device="cpu")
    with pytest.raises(GenerationError, match="text is empty"):
        generate.generate_speech("anna", "  ", base_model=tiny_model, synthesizer=synth)
    with pytest.raises(GenerationError, match="candidates"):
        generate.generate_candidates("anna", "Hi.", base_model=tiny_model, candidates=0)
    with pytest.raises(GenerationError, match="digits in Hindi"):  # coqui-tts would fail inside the model
        generate.generate_speech("anna", "हमने यह घर 2012 में खरीदा था।", language="hi", base_model=tiny_model)
    with pytest.raises(conditioning.ConditioningError, match="voices/other/x.wav"):
        generate.generate_speech("anna", "Hi.", base_model=tiny_model, references=["voices/other/x.wav"])
    with pytest.raises(GenerationError, match="temperature"):
        GenerationSettings(temperature=0)
    with pytest.raises(models.BaseModelError, match="missing"):
        generate.generate_speech("anna", "Hi.", base_model=gen_home / "no-model")
    (paths.voice_dir("anna") / "reference.wav").write_text("not audio")
    with pytest.raises(conditioning.ConditioningError, match="reference.wav"):
        generate.generate_speech("anna", "Hi.", base_model=tiny_model, synthesizer=synth)


def test_warm_up_speaks_with_neutral_conditioning(tiny_model):
    """What load() does on a GPU before the first request, run here on the CPU."""
    synth = Synthesizer(tiny_model, device="cpu")
    assert synth.precision == "fp32"
    synth.load(None, log=lambda _: None)
    assert synth.warm_up() > 0
    with pytest.raises(GenerationError, match="precision"):
        Synthesizer(tiny_model, device="cpu", precision="int4")
