"""F5-TTS through the same app, on CPU, as a user runs it from the command line:

espeak-ng speech → ``prepare`` (faster-whisper tiny.en, real recognition) → ``tiny-model --family
f5`` → ``config`` (the family read from the base-model folder, with the authors' recipe) →
``train`` → a Stop → ``train`` resumes bit-exact → ``generate`` (24 kHz) → ``export`` → the zip
loads with f5_tts's own API → ``import`` → ``generate`` with the imported model → ``evaluate``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import train_rows
from safetensors.torch import load_file

from engine import runs

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = [
    "The quick brown fox jumps over the lazy dog. A bird sang in the garden all morning.",
    "She sells sea shells by the sea shore. The shells she sells are surely from the sea.",
    "We walked to the old bridge at noon. Then we went home and made a pot of tea.",
    "My brother plays the piano every evening. His favourite song is very slow and quiet.",
    "It was raining when the train arrived. Everybody on the platform opened an umbrella.",
]


def engine(args: list[str], home: Path, timeout: float = 600, wait: bool = True):
    env = dict(os.environ, TIMBRE_HOME=str(home), PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "engine", *map(str, args)]
    if not wait:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
    return result


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
        return samples, w.getframerate()


@pytest.fixture(scope="module")
def f5_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("f5-home")
    voice = home / "voices" / "anna"
    voice.mkdir(parents=True)
    for i, text in enumerate(SENTENCES):
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(voice / f"take{i}.wav"), text], check=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIMBRE_HOME", str(home))
        yield home


def test_f5_cli_flow(f5_home: Path, faster_whisper_model_path: str):
    home = f5_home
    engine(["prepare", "anna", "--whisper-model", faster_whisper_model_path, "--validation-fraction", "0.2"], home)
    model = home / "f5-tiny"
    assert "F5-TTS" in engine(["tiny-model", model, "--family", "f5"], home).stdout

    # config: the family comes from the folder, the recipe from the family; options still win
    common = ["--base-model", model, "--epochs", "3", "--batch-frames", "500", "--learning-rate", "1e-3",
              "--keep-checkpoints", "5", "--no-evaluate", "--gpus", "0"]  # fmt: skip
    engine(["config", "anna", "straight", *common], home)
    engine(["config", "anna", "split", *common], home)
    straight = home / "training" / "anna" / "straight" / "train.yaml"
    config = yaml.safe_load(straight.read_text())
    assert config["family"] == "f5" and config["lr_schedule"] == "warmup_linear"
    assert config["batch_frames"] == 500 and config["learning_rate"] == 1e-3 and config["max_grad_norm"] == 1.0

    engine(["train", straight], home)
    rows = train_rows(straight.parent)
    assert rows and all(np.isfinite(r["loss_flow"]) and r["loss"] == r["loss_flow"] for r in rows)
    total = rows[-1]["step"]
    assert total >= 4, rows

    # the same run stopped after step 2 and trained again: bit-exact
    split = home / "training" / "anna" / "split" / "train.yaml"
    proc = engine(["train", split], home, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and not any(r["step"] >= 2 for r in train_rows(split.parent)):
        time.sleep(0.05)
    (split.parent / "STOP").write_text("")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "stopped at step" in out, out[-3000:]
    assert runs.run_status("anna", "split").state == "stopped"
    engine(["train", split], home)
    name = runs.checkpoint_name(total)
    a = load_file(str(runs.find_checkpoint(straight.parent, name).path / "model.safetensors"))
    b = load_file(str(runs.find_checkpoint(split.parent, name).path / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keys = ("step", "epoch", "loss_flow", "loss", "lr", "grad_norm", "samples")
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in train_rows(split.parent)]

    # speech from the run: 24 kHz, not silent, the settings recorded
    wav = home / "run.wav"
    engine(["generate", "anna", "Hello there. Nice to meet you.", "--run", "straight", "--seed", "3",
            "--nfe-step", "8", "--out", wav], home)  # fmt: skip
    samples, rate = read_wav(wav)
    assert rate == 24000 and samples.size > 0.3 * 24000 and np.sqrt(np.mean(samples**2)) > 1e-4
    meta = json.loads(wav.with_suffix(".json").read_text())
    assert meta["run"] == "straight" and meta["settings"]["nfe_step"] == 8

    # export → f5_tts's own loaders → import → generate with the imported model
    exported = Path(engine(["export", "anna", "straight"], home).stdout.strip().splitlines()[-1])
    unpacked = home / "unpacked"
    import zipfile

    with zipfile.ZipFile(exported) as archive:
        archive.extractall(unpacked)
        card = archive.read("MODEL_CARD.md").decode()
    assert "CC-BY-NC-4.0" in card and "straight" in card
    from f5_tts.infer.utils_infer import load_model, load_vocoder
    from f5_tts.model import DiT
    from omegaconf import OmegaConf

    arch = OmegaConf.load(unpacked / "model.yaml").model.arch
    loaded = load_model(DiT, arch, str(unpacked / "model.safetensors"), vocab_file=str(unpacked / "vocab.txt"),
                        device="cpu")  # fmt: skip
    trained = {k.removeprefix("ema_model."): v for k, v in load_file(str(unpacked / "model.safetensors")).items()}
    state = loaded.state_dict()
    assert all(torch.equal(state[k].float(), a[k].float()) for k in a if k in state and not k.startswith("mel_spec"))
    vocoder = load_vocoder(vocoder_name="vocos", is_local=True, local_path=str(unpacked / "vocoder"), device="cpu")
    with torch.inference_mode():
        mel, _ = loaded.sample(cond=torch.randn(1, 24000) * 0.1, text=["hello there"], duration=150, steps=4, seed=0)
        audio = vocoder.decode(mel.permute(0, 2, 1).float())
    assert audio.shape[-1] > 100 and torch.isfinite(audio).all() and trained

    engine(["import", exported, "anna-f5"], home)
    wav2 = home / "imported.wav"
    engine(["generate", "anna", "Hello there.", "--run", "imported:anna-f5", "--seed", "3", "--nfe-step", "8",
            "--out", wav2], home)  # fmt: skip
    assert read_wav(wav2)[1] == 24000

    # a new run from a checkpoint's weights (branch) trains from them
    first = runs.list_checkpoints(straight.parent)[0].path.name
    engine(["branch", "anna", "straight", "branched", "--checkpoint", first], home)
    branched = home / "training" / "anna" / "branched" / "train.yaml"
    assert yaml.safe_load(branched.read_text())["family"] == "f5"
    assert "started from the weights in" in engine(["train", branched], home).stdout

    # the checkpoint scorer works unchanged for the second family
    result = engine(["evaluate", "anna", "straight", "--sentences", "2", "--whisper-model", faster_whisper_model_path,
                     "--device", "cpu"], home)  # fmt: skip
    summary = json.loads(result.stdout)
    scores = json.loads((straight.parent / "eval" / name / "scores.json").read_text())
    assert len(scores["sentences"]) == 2 and scores["aggregate"]["cer"] is not None
    assert summary["baseline"] is not None
