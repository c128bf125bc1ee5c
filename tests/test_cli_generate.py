"""``python -m engine generate`` with the sampling settings on the command line (engine.cli),
run in-process with the tiny random model on CPU: the settings reach the output's JSON, best of N
prints every path, and bad values are refused naming their option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from generate_helpers import copy_home

from engine import paths
from engine.cli import main


@pytest.fixture
def cli_home(dataset_home, tmp_path, monkeypatch) -> Path:
    """A TIMBRE_HOME of its own (a copy of the ``home`` fixture's folder: voices/anna/,
    datasets/anna/), so the outputs written here stay out of the shared one."""
    home = copy_home(dataset_home, tmp_path / "home")
    monkeypatch.setenv("TIMBRE_HOME", str(home))
    return home


def generate(capsys, tiny_model: Path, *options: str) -> tuple[int, list[Path], str]:
    """Run ``generate anna "Hello there."`` on the tiny model; returns the exit code, the WAV
    paths printed (one a line, after the log lines) and stderr."""
    argv = ["generate", "anna", "Hello there.", "--base-model", str(tiny_model), *options]
    code = main(argv)
    out, err = capsys.readouterr()
    printed = [Path(line) for line in out.splitlines() if line.endswith(".wav") and not line.startswith("wrote ")]
    return code, printed, err


def test_generate_records_the_settings_given_on_the_command_line(cli_home, tiny_model, capsys):
    code, printed, err = generate(
        capsys, tiny_model, "--seed", "5", "--temperature", "0.5", "--top-k", "20", "--top-p", "0.7",
        "--repetition-penalty", "3", "--length-penalty", "1.5", "--speed", "1.25", "--max-seconds", "0.5",
        "--no-split-sentences",
    )  # fmt: skip
    assert code == 0, err
    [wav] = printed
    assert wav.is_file() and wav.parent == paths.output_dir("anna")
    settings = json.loads(wav.with_suffix(".json").read_text())["settings"]
    assert settings == {
        "temperature": 0.5, "top_k": 20, "top_p": 0.7, "repetition_penalty": 3.0, "length_penalty": 1.5,
        "speed": 1.25, "seed": 5, "max_seconds": 0.5, "split_sentences": False,
        "nfe_step": 32, "cfg_strength": 2.0, "sway_sampling_coef": -1.0, "use_ema": True,  # F5-TTS's defaults
    }  # fmt: skip


def test_generate_candidates_prints_every_path(cli_home, tiny_model, capsys):
    code, printed, err = generate(capsys, tiny_model, "--candidates", "2", "--seed", "11", "--max-seconds", "0.3")
    assert code == 0, err
    assert len(printed) == 2 and all(p.is_file() for p in printed)
    metas = [json.loads(p.with_suffix(".json").read_text()) for p in printed]
    assert [(m["settings"]["seed"], m["candidate"], m["candidates"]) for m in metas] == [(11, 1, 2), (12, 2, 2)]
    assert all(m["settings"]["temperature"] == 0.75 for m in metas)  # defaults where no option was given


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--top-p", "1.5"], "error: --top-p: top_p must be in (0, 1], got 1.5"),
        (["--temperature", "0"], "error: --temperature: temperature must be in (0, 5]"),
        (["--top-k", "0"], "error: --top-k: top_k must be at least 1"),
        (["--speed", "9"], "error: --speed: speed must be in [0.25, 4]"),
        (["--max-seconds", "-1"], "error: --max-seconds: max_seconds must not be negative"),
        (["--candidates", "17"], "error: --candidates must be between 1 and 16, got 17"),
        (["--candidates", "2", "--out", "x.wav"], "error: --out names one file"),
    ],
)
def test_bad_generation_settings_are_refused_naming_the_option(cli_home, tiny_model, capsys, options, message):
    code, printed, err = generate(capsys, tiny_model, *options)
    assert code == 2 and not printed
    assert err.startswith(message)
    assert not paths.output_dir("anna").is_dir() or not list(paths.output_dir("anna").iterdir())


def test_a_value_argparse_cannot_read_is_refused_by_argparse(cli_home, tiny_model, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "anna", "Hi.", "--base-model", str(tiny_model), "--top-k", "many"])
    assert exit_info.value.code == 2
    assert "--top-k: invalid int value: 'many'" in capsys.readouterr().err
