"""The web UI's parts of checkpoint evaluation, without a browser: the Training tab's scores
(curves, table, text, listening grid, refresh), the form's evaluation fields, "best" in the
Generate tab's checkpoints and export, and candidates ranked best first. The run folders are
written by hand (scores.json, summary.json and 24 kHz WAVs), as the evaluator leaves them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine import paths, runs
from engine.config import ConfigError, TrainConfig
from engine.eval_sentences import SENTENCES
from engine.generate import synthesis as engine_generate
from engine.training import evaluation
from webui.app import build_app
from webui.tabs import TabContext
from webui.tabs import generate as generate_tab
from webui.tabs import generate_export as gexport
from webui.tabs import generate_form as gform
from webui.tabs import training as training_tab
from webui.tabs import training_eval as teval
from webui.tabs import training_form as tform
from webui.tabs import training_runs as truns

TEXTS = ["Please close the door.", "The soup is still hot."]
SETUP = {"sentences": TEXTS, "seed": 1234, "language": "en", "backend": "faster-whisper", "whisper_model": "tiny"}
UI = {name: name for name in ("eval_text", "eval_plot", "eval_table", "eval_listen", "eval_grid")}


def tone(path: Path, seconds: float = 0.3, hz: float = 220.0) -> Path:
    """A 24 kHz mono sine WAV."""
    t = np.arange(int(24_000 * seconds)) / 24_000
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.2 * np.sin(2 * np.pi * hz * t)).astype(np.float32), 24_000)
    return path


def write_scores(run_dir: Path, name: str, step: int | None, cer: float, secs: float, setup=SETUP, flags=()) -> dict:
    """eval/<name>/ with one WAV per sentence and its scores.json; returns the aggregate."""
    folder = evaluation.eval_dir(run_dir, name)
    rows = []
    for i, text in enumerate(setup["sentences"]):
        tone(folder / f"{i:02d}.wav", hz=220 + 40 * i + (step or 0))
        rows.append({
            "index": i, "text": text, "wav": f"{i:02d}.wav", "seed": 1234 + i, "transcript": text.lower(),
            "cer": cer, "wer": cer * 2, "secs": secs, "secs_xtts": secs + 0.1, "seconds": 0.3, "speech_seconds": 0.3,
            "chars_per_second": 14.0, "cps_ratio": 1.0, "flags": list(flags) if i == 1 else [],
        })  # fmt: skip
    aggregate = evaluation.aggregate(rows)
    scores = {"name": name, "step": step, "setup": setup, "aggregate": aggregate, "sentences": rows,
              "timing": {"seconds_per_sentence": 1.5}, **{k: aggregate[k] for k in ("wer", "cer", "secs")}}  # fmt: skip
    (folder / "scores.json").write_text(json.dumps(scores))
    return aggregate


def scored_run(voice: str = "anna", run: str = "r", steps=(2, 4)) -> Path:
    """A run with complete checkpoints ``steps``, the baseline and every step scored (step 4
    the best), and a hand-written summary.json."""
    run_dir = TrainConfig(voice=voice, run=run).save_new().parent
    for step in steps:
        folder = run_dir / "checkpoints" / runs.checkpoint_name(step)
        folder.mkdir(parents=True)
        (folder / "COMPLETE").write_text("")
    baseline = write_scores(run_dir, "baseline", None, cer=0.05, secs=0.60)
    checkpoints = []
    for step in steps:
        name = runs.checkpoint_name(step)
        aggregate = write_scores(run_dir, name, step, cer=0.04, secs=0.6 + step / 100, flags=["truncated or rushed"])
        checkpoints.append({"name": name, "step": step, **aggregate, "seconds_per_sentence": 1.5, "exists": True,
                            "comparable": True})  # fmt: skip
    best = checkpoints[-1]
    summary = {"baseline": baseline, "checkpoints": checkpoints, "rule": "the highest SECS among the intelligible",
               "best": {"name": best["name"], "step": best["step"], "by": "secs", "secs": best["secs"],
                        "cer_median": best["cer_median"]}, "best_reason": "highest SECS (0.640)"}  # fmt: skip
    (evaluation.eval_dir(run_dir) / "summary.json").write_text(json.dumps(summary))
    return run_dir


# --- Training tab: the scores ---------------------------------------------------------------------


def test_table_text_and_curves_of_a_scored_run(timbre_home):
    run_dir = scored_run()
    summary = evaluation.read_summary(run_dir)
    table = teval.scores_table(summary)
    assert list(table["checkpoint"]) == ["base model", "step-0000002", "step-0000004"]
    assert list(table["best"]) == ["", "", "★ best"] and list(table["exists"]) == ["", "yes", "yes"]
    assert table["SECS"][2] == "0.640" and table["CER"][0] == "0.050" and table["flagged"][1] == "1 / 2"
    assert table["SECS (XTTS, biased)"][2] == "0.740" and table["pace ratio"][1] == "1.00"

    text = teval.describe(run_dir, summary)
    assert "**Best checkpoint: step-0000004** (SECS 0.640, median CER 0.040): highest SECS (0.640)" in text
    assert "*Rule:* the highest SECS" in text

    html = teval.plot_html(summary)
    assert 'data-points="2"' in html and 'data-best="step-0000004"' in html
    for gid in ("eval-wer", "eval-cer", "eval-secs", "eval-secs_xtts", "eval-baseline-cer", "eval-baseline-secs",
                "eval-best-secs", "eval-best-cer"):  # fmt: skip
        assert f'id="{gid}"' in html, gid
    assert "No scores yet" in teval.plot_html({})

    # A checkpoint pruned since, one scored with other sentences, and the evaluator's error.
    summary["checkpoints"][0] |= {"exists": False, "comparable": False}
    summary |= {"best": None, "best_reason": "the base model has not been scored yet", "error": "ValueError: boom"}
    table = teval.scores_table(summary)
    assert table["exists"][1] == "pruned" and table["note"][1].startswith("not comparable")
    assert 'data-points="1"' in teval.plot_html(summary)
    text = teval.describe(run_dir, summary)
    assert "**Evaluation failed:** ValueError: boom" in text
    assert "No best checkpoint yet: the base model has not been scored yet." in text
    assert teval.listen_choices(summary) == [
        ("step-0000004", "step-0000004"),
        ("step-0000002 (pruned)", "step-0000002"),
    ]


def test_summary_of_the_engine_reads_the_same(timbre_home):
    """summary.json as engine.training.evaluation writes it (from the scores.json files) is shown alike."""
    run_dir = scored_run()
    summary = evaluation.update_summary(run_dir)
    assert summary["best"]["name"] == "step-0000004"
    table = teval.scores_table(summary)
    assert list(table["best"]) == ["", "", "★ best"] and set(table["exists"][1:]) == {"yes"}
    assert teval.default_listen(summary) == ["step-0000004"]
    # "Start a new run from these weights" names the best by score too.
    assert truns.checkpoint_choices("anna", "r")[0] == ("step-0000004 (newest, best by score)", "step-0000004")


def test_texts_before_any_score(timbre_home):
    run_dir = TrainConfig(voice="anna", run="r").save_new().parent
    assert "No scores yet: the evaluator scores" in teval.describe(run_dir, {})
    off = TrainConfig(voice="anna", run="off", evaluate=False).save_new().parent
    assert "evaluation is off" in teval.describe(off, {})
    assert teval.describe(None, {}) == "" and teval.grid_html(None, []) == ""
    assert "Nothing to listen to yet" in teval.grid_html(run_dir, ["step-0000002"])


def test_listening_grid_plays_each_sentence_of_each_column(timbre_home):
    run_dir = scored_run()
    html = teval.grid_html(run_dir, ["step-0000004", "step-0000002", "step-0000009"], best="step-0000004")
    assert 'data-columns="baseline,step-0000004,step-0000002"' in html and 'data-sentences="2"' in html
    assert html.count("<audio controls") == 6 and "step-0000004 ★ best" in html and ">base model<" in html
    for text in TEXTS:
        assert f'<td class="eval-text">{text}</td>' in html
    assert "CER 0.040 · SECS 0.640" in html and "⚠ truncated or rushed" in html and "“please close the door.”" in html
    # Each cell plays a copy in Gradio's cache, never a data-folder path.
    sources = [part.split('"')[0] for part in html.split('src="')[1:]]
    assert all(src.startswith("gradio_api/file=") and str(timbre_home) not in src for src in sources)
    assert len(set(sources)) == 6
    (evaluation.eval_dir(run_dir, "step-0000002") / "01.wav").unlink()
    assert "audio missing" in teval.grid_html(run_dir, ["step-0000002"])


def test_refresh_rereads_only_when_the_summary_changes(timbre_home):
    run_dir = scored_run()
    view = training_tab.new_view()
    out = teval.refresh(UI, view, "anna", "r", [], force=True)
    assert set(out) == set(UI) and out["eval_listen"].value == ["step-0000004"]
    assert 'data-columns="baseline,step-0000004"' in out["eval_grid"]
    assert teval.refresh(UI, view, "anna", "r", ["step-0000004"]) == {}  # nothing changed: nothing sent

    # The user picks another checkpoint; a new summary keeps the pick and sends no unchanged grid.
    summary_path = evaluation.eval_dir(run_dir) / "summary.json"
    summary_path.write_text(summary_path.read_text() + " ")
    out = teval.refresh(UI, view, "anna", "r", ["step-0000002"])
    assert out["eval_listen"].value == ["step-0000002"] and "eval_grid" in out
    summary_path.write_text(summary_path.read_text() + " ")
    out = teval.refresh(UI, view, "anna", "r", ["step-0000002"])
    assert "eval_table" in out and "eval_grid" not in out

    # Another run: its default selection, whatever was picked before.
    assert teval.refresh(UI, view, "anna", "new", ["step-0000002"], force=True)["eval_listen"].value == []
    assert teval.listen("anna", "r", ["step-0000002"]).count("<audio") == 4


def test_training_tab_wires_the_scores(timbre_home):
    scored_run()
    demo = build_app(base_model=timbre_home / "model")
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    for elem_id in ("training-eval-plot", "training-eval-table", "training-eval-text", "training-eval-listen",
                    "training-eval-grid", "train-evaluate", "train-eval-sentences", "generate-rank",
                    "generate-export-best"):  # fmt: skip
        assert elem_id in ids, elem_id
    on_change = next(
        fn for fn in demo.fns.values() if fn.name == "on_change" and fn.fn.__module__ == training_tab.__name__
    )
    out = on_change.fn(training_tab.new_view(), "anna", "r", [], "step", [])
    grid = next(value for comp, value in out.items() if getattr(comp, "elem_id", "") == "training-eval-grid")
    assert grid.count("<audio") == 4


# --- Training form: the evaluation fields ----------------------------------------------------------


def test_form_evaluation_fields(timbre_home):
    form = {f.name: tform.to_form_value(f.name, getattr(TrainConfig(), f.name)) for f in tform.form_fields()}
    assert form["evaluate"] is True and form["eval_sentences"] == ""
    config = tform.form_to_config({**form, "evaluate": False, "eval_sentences": " One.\n\n Two? \n"}, "anna", "r")
    assert config.evaluate is False and config.eval_sentences == ["One.", "Two?"]
    assert tform.to_form_value("eval_sentences", config.eval_sentences) == "One.\nTwo?"
    with pytest.raises(ConfigError, match=r"eval_sentences\[1\].*\(line 3 of the evaluation sentences\)"):
        tform.form_to_config({**form, "eval_sentences": "One.\n\n" + "x" * 400}, "anna", "r")
    assert "**Not valid:** eval_sentences" in tform.config_checks({**form, "eval_sentences": "y" * 400}, "anna", "r")
    with pytest.raises(ConfigError, match="eval_backend"):
        tform.form_to_config({**form, "eval_backend": "whisper.cpp"}, "anna", "r")


def test_form_fills_the_sentences_of_the_voice_language(timbre_home):
    english = tform.default_eval_sentences(None, "en").splitlines()
    assert english == list(SENTENCES["en"][:8])
    dataset = paths.dataset_dir("anna")
    dataset.mkdir(parents=True)
    (dataset / "train.csv").write_text(f"audio_file|text|speaker_name\nwavs/a.wav|Well. {TEXTS[0]} Yes.|anna\n")
    excluded = tform.default_eval_sentences("anna", "en").splitlines()
    assert TEXTS[0] not in excluded and len(excluded) == 8
    assert tform.stock_sentences("") and tform.stock_sentences("\n".join(SENTENCES["de"][:3]))
    assert not tform.stock_sentences(f"{TEXTS[0]}\nMy own sentence.")

    demo = build_app(base_model=timbre_home / "model")
    on_voice = next(
        fn for fn in demo.fns.values() if fn.name == "on_voice" and fn.fn.__module__ == training_tab.__name__
    )
    assert on_voice.outputs[-2].elem_id == "train-eval-sentences"
    assert on_voice.fn("anna", "")[-2] == "\n".join(excluded)
    assert on_voice.fn("anna", "My own sentence.")[-2] == {"__type__": "update"}  # gr.skip(): kept
    on_language = next(fn for fn in demo.fns.values() if fn.name == "on_language")
    assert on_language.fn("anna", "de", "\n".join(excluded)) == tform.default_eval_sentences("anna", "de")


# --- Generate tab: best checkpoint, export, best of N ----------------------------------------------


def test_best_among_the_checkpoints_and_in_export(timbre_home, monkeypatch):
    run_dir = TrainConfig(voice="anna", run="r").save_new().parent
    for step in (2, 4):
        (run_dir / "checkpoints" / runs.checkpoint_name(step)).mkdir(parents=True)
        (run_dir / "checkpoints" / runs.checkpoint_name(step) / "COMPLETE").write_text("")
    assert gform.checkpoint_choices("anna", "r") == ["latest", "step-0000004", "step-0000002"]
    (evaluation.eval_dir(run_dir)).mkdir(parents=True)
    (evaluation.eval_dir(run_dir) / "summary.json").write_text(json.dumps({"best": {"name": "step-0000002"}}))
    assert gform.checkpoint_choices("anna", "r") == ["latest", "best", "step-0000004", "step-0000002"]
    assert gform.checkpoint_labels("anna", "r")[:2] == [("latest", "latest"), ("best (step-0000002, by score)", "best")]
    assert gform.checkpoint_labels("anna", engine_generate.BASE_MODEL) == [("latest", "latest")]

    calls = []
    monkeypatch.setattr(gexport.export, "export_model", lambda *args, **kw: calls.append(args) or Path("x.zip"))
    monkeypatch.setattr(gform, "synthesizer", lambda ctx: None)
    form = {"voice": "anna", "run": "r", "checkpoint": "step-0000004", "references": []}
    gexport.export_zip(TabContext(blocks=None), form)
    gexport.export_zip(TabContext(blocks=None), {**form, "export_best": True})
    assert [args[2] for args in calls] == ["step-0000004", "best"]


class FakeScorer:
    """Scores a WAV by its loudness: the quieter, the lower the SECS; the first is not understood."""

    voice, language = "anna", "en"

    def score(self, audio_16k, text):
        level = float(np.abs(audio_16k).max())
        return {"cer": 0.5 if level > 0.45 else 0.0, "secs": round(level, 3), "flags": [], "transcript": text}


def test_candidates_ranked_best_first(timbre_home):
    folder = paths.output_dir("anna")
    wavs = []
    for i, level in enumerate((0.5, 0.1, 0.3)):
        path = folder / f"c{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, np.full(24_000, level, dtype=np.float32), 24_000)
        path.with_suffix(".json").write_text(json.dumps({"settings": {"seed": 10 + i}}))
        wavs.append(path)
    ctx = TabContext(blocks=None)
    ctx.scorer = FakeScorer()
    values = {"voice": "anna", "language": "en", "text": "Hello.", "rank": True}
    ranked = generate_tab.rank_if_asked(ctx, values, wavs, print)
    assert [Path(r["path"]).name for r in ranked] == ["c2.wav", "c1.wav", "c0.wav"]
    updates = generate_tab.player_updates(wavs, ranked)
    assert updates[0].label == "#1 of 3 · seed 12 · CER 0.000 · SECS 0.300"
    assert updates[2].label.startswith("#3 of 3 · seed 10 · CER 0.500") and updates[3].visible is False
    assert generate_tab.rank_if_asked(ctx, {**values, "rank": False}, wavs, print) is None
    assert generate_tab.rank_if_asked(ctx, values, wavs[:1], print) is None
    ctx.release_models()
    assert ctx.scorer is None
