"""engine.dataset.edit and engine.dataset.quality: manual edits that survive prepare, atomic
saves, re-transcription of one clip, and the quality report."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from engine.dataset import edit as dataset_edit
from engine.dataset import quality as dataset_quality
from engine.dataset.edit import DatasetEditError
from engine.dataset.prepare import DatasetError, prepare_dataset
from engine.paths import InvalidNameError
from engine.speech import audio, transcribe
from engine.speech.transcribe import Segment, Word

VOICE = "speaker"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, speech_voice, faster_whisper_model_path) -> Path:
    """A home with datasets/speaker/ made from ``speech_voice`` by faster-whisper tiny.en."""
    home = tmp_path_factory.mktemp("home")
    speech_voice.install(home, VOICE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIMBRE_HOME", str(home))
        prepare_dataset(VOICE, whisper_model=faster_whisper_model_path, log=lambda _: None)
    return home


@pytest.fixture
def home(prepared, tmp_path, monkeypatch) -> Path:
    """A private copy of the prepared home, with TIMBRE_HOME pointing at it."""
    home = tmp_path / "home"
    shutil.copytree(prepared, home)
    monkeypatch.setenv("TIMBRE_HOME", str(home))
    return home


def csv_rows(home: Path) -> dict[str, dict[str, str]]:
    """{audio_file: {"text", "split"}} of train.csv and validation.csv, as coqui reads them."""
    rows = {}
    for split in ("train", "validation"):
        with open(home / "datasets" / VOICE / f"{split}.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle, delimiter="|"):
                rows[row["audio_file"]] = {"text": row["text"], "split": split}
    return rows


def files(home: Path) -> dict[str, bytes]:
    folder = home / "datasets" / VOICE
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".lock"}


# --- editing ---------------------------------------------------------------------------------


def test_edit_exclude_restore_and_revert(home):
    clips = dataset_edit.list_clips(VOICE)
    assert len(clips) >= 4 and all(c["split"] in ("train", "validation") and not c["excluded"] for c in clips)
    first, second = clips[0], clips[1]
    assert first["text"] == first["whisper_text"] and Path(first["path"]).is_file()

    edited = dataset_edit.edit_text(VOICE, first["audio_file"], "  Today is a | lovely\nday.  ")
    assert edited["text"] == "Today is a lovely day." and edited["origin"] == "manual"
    assert csv_rows(home)[first["audio_file"]]["text"] == "Today is a lovely day."
    saved = json.loads((home / "datasets" / VOICE / "edits.json").read_text())
    entry = saved["clips"][first["key"]]
    assert entry["text"] == "Today is a lovely day." and entry["source"] == first["source"]
    assert first["key"].startswith(transcribe.file_sha256(home / "voices" / VOICE / first["source"]))

    dataset_edit.set_excluded(VOICE, second["audio_file"])
    rows = csv_rows(home)
    assert second["audio_file"] not in rows and len(rows) == len(clips) - 1
    assert (home / "datasets" / VOICE / second["audio_file"]).is_file()  # kept on disk
    listed = {c["audio_file"]: c for c in dataset_edit.list_clips(VOICE)}
    assert listed[second["audio_file"]]["split"] == "excluded" and listed[second["audio_file"]]["excluded"]
    report = json.loads((home / "datasets" / VOICE / "report.json").read_text())
    assert (report["excluded"], report["edited"], report["clips"]) == (1, 1, len(clips))
    assert report["train"] + report["validation"] == len(clips) - 1

    restored = dataset_edit.set_excluded(VOICE, second["audio_file"], excluded=False)
    assert restored["split"] == second["split"] and csv_rows(home)[second["audio_file"]]["split"] == second["split"]
    reverted = dataset_edit.revert_text(VOICE, first["audio_file"])
    assert reverted["text"] == first["whisper_text"] and reverted["origin"] == "whisper"
    # Nothing left to remember: the entries are gone and the csv files are as prepare wrote them.
    assert json.loads((home / "datasets" / VOICE / "edits.json").read_text())["clips"] == {}
    assert {k: v["text"] for k, v in csv_rows(home).items()} == {c["audio_file"]: c["text"] for c in clips}

    # Saving Whisper's own text marks it as checked.
    assert dataset_edit.edit_text(VOICE, first["audio_file"], first["whisper_text"])["origin"] == "manual"


def test_typed_quotes_reach_the_trainer_as_typed(home):
    from engine.training.data import read_metadata

    clip = dataset_edit.list_clips(VOICE)[0]
    dataset_edit.edit_text(VOICE, clip["audio_file"], 'He said "hi" and left.')
    folder = home / "datasets" / VOICE
    clips = read_metadata(folder / f"{clip['split']}.csv")
    assert [c.text for c in clips if c.audio_path.name == Path(clip["audio_file"]).name] == ['He said "hi" and left.']
    assert csv_rows(home)[clip["audio_file"]]["text"] == 'He said "hi" and left.'  # coqui's reader too


def test_edits_survive_prepare_and_only_new_recordings_are_transcribed(
    home, espeak_wav, monkeypatch, faster_whisper_model_path
):
    clips = dataset_edit.list_clips(VOICE)
    market = next(c for c in clips if c["source"] == "market.wav")
    river = next(c for c in clips if c["source"] == "river.wav")
    piano = next(c for c in clips if c["source"] == "piano.mp3")
    dataset_edit.edit_text(VOICE, market["audio_file"], "Today is a beautiful day, said Ann.")
    dataset_edit.set_excluded(VOICE, river["audio_file"])
    dataset_edit.edit_text(VOICE, piano["audio_file"], "A recording that will be deleted.")

    espeak_wav("A new recording arrived today. It was short and clear.", home / "voices" / VOICE / "zebra.wav")
    (home / "voices" / VOICE / "piano.mp3").unlink()
    calls = []
    real = transcribe.transcribe
    monkeypatch.setattr(
        transcribe, "transcribe", lambda *a, **k: calls.append(k.get("word_timestamps", True)) or real(*a, **k)
    )
    report = prepare_dataset(VOICE, whisper_model=faster_whisper_model_path, log=lambda _: None)

    assert calls == [True, False] and report.transcribed == 1 and report.reused == 3  # only zebra.wav is new
    assert (report.edited, report.excluded, report.unmatched_edits) == (1, 1, 1)
    rows = csv_rows(home)
    assert rows[market["audio_file"]]["text"] == "Today is a beautiful day, said Ann."
    assert river["audio_file"] not in rows and (home / "datasets" / VOICE / river["audio_file"]).is_file()
    assert any(name.startswith("wavs/zebra_") for name in rows)
    listed = {c["audio_file"]: c for c in dataset_edit.list_clips(VOICE)}
    assert listed[river["audio_file"]]["split"] == "excluded"
    # The edit of the deleted recording's clip is kept, unused, in case it comes back.
    saved = json.loads((home / "datasets" / VOICE / "edits.json").read_text())["clips"]
    assert saved[piano["key"]]["text"] == "A recording that will be deleted."
    # The clips that were there before keep their split (one may cross if the count changed).
    moved = [c for c in clips if c["audio_file"] in rows and rows[c["audio_file"]]["split"] != c["split"]]
    assert len(moved) <= 1


def test_an_interrupted_save_keeps_the_old_files(home, monkeypatch):
    clip = dataset_edit.list_clips(VOICE)[0]
    dataset_edit.edit_text(VOICE, clip["audio_file"], "A first edit.")
    before = files(home)
    real_replace = audio.os.replace

    def fail_on(name):
        def replace(src, dst):
            if Path(dst).name == name:
                raise OSError(f"disk full while saving {name}")
            return real_replace(src, dst)

        return replace

    # The app dies while saving edits.json: every file is as it was.
    monkeypatch.setattr(audio.os, "replace", fail_on("edits.json"))
    with pytest.raises(OSError, match="disk full"):
        dataset_edit.set_excluded(VOICE, clip["audio_file"])
    assert files(home) == before  # no temp file left either

    # The app dies after edits.json, while writing the csv files: edits.json has the change,
    # the others are whole (old), and the next look at the dataset brings them up to date.
    monkeypatch.setattr(audio.os, "replace", fail_on("train.csv"))
    with pytest.raises(OSError, match="disk full"):
        dataset_edit.set_excluded(VOICE, clip["audio_file"])
    after = files(home)
    assert after["edits.json"] != before["edits.json"]
    assert {k: v for k, v in after.items() if k != "edits.json"} == {
        k: v for k, v in before.items() if k != "edits.json"
    }
    assert clip["audio_file"] in csv_rows(home)
    monkeypatch.setattr(audio.os, "replace", real_replace)
    assert dataset_edit.list_clips(VOICE)[0]["split"] == "excluded"  # read through the edits
    written = dataset_edit.sync_metadata(VOICE)
    assert "report.json" in written and set(written) <= {"train.csv", "validation.csv", "report.json"}
    assert clip["audio_file"] not in csv_rows(home)
    assert dataset_edit.sync_metadata(VOICE) == []  # now current


def test_bad_input_is_refused_with_the_file_named(home, faster_whisper_model_path):
    clip = dataset_edit.list_clips(VOICE)[0]
    with pytest.raises(DatasetEditError, match="no clip 'wavs/nothing.wav'"):
        dataset_edit.set_excluded(VOICE, "wavs/nothing.wav")
    with pytest.raises(DatasetEditError, match=f"{clip['audio_file']}: the transcript is empty"):
        dataset_edit.edit_text(VOICE, clip["audio_file"], " | \n ")
    with pytest.raises(DatasetEditError, match="report.json is missing"):
        dataset_edit.list_clips("nobody")
    with pytest.raises(InvalidNameError):
        dataset_edit.edit_text("../etc", clip["audio_file"], "x")
    assert dataset_edit.sync_metadata("nobody") == []

    # An unreadable edits.json is never overwritten, and prepare refuses to drop its edits.
    edits = home / "datasets" / VOICE / "edits.json"
    edits.write_text('{"version": 1, "clips": {"abc": ')
    for call in (
        lambda: dataset_edit.list_clips(VOICE),
        lambda: dataset_edit.set_excluded(VOICE, clip["audio_file"]),
        lambda: prepare_dataset(VOICE, whisper_model=faster_whisper_model_path, log=lambda _: None),
    ):
        with pytest.raises((DatasetEditError, DatasetError), match="edits.json: cannot be read"):
            call()
    assert edits.read_text() == '{"version": 1, "clips": {"abc": '

    # A broken report.json names itself.
    edits.unlink()
    (home / "datasets" / VOICE / "report.json").write_text("{}")
    with pytest.raises(DatasetEditError, match="report.json: not a readable dataset report"):
        dataset_edit.list_clips(VOICE)


def test_edits_wait_for_a_running_prepare(home):
    fcntl = pytest.importorskip("fcntl")
    clip = dataset_edit.list_clips(VOICE)[0]
    with open(home / "datasets" / VOICE / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(dataset_edit.DatasetBusyError, match="another dataset run is in progress"):
            dataset_edit.set_excluded(VOICE, clip["audio_file"])
        assert dataset_edit.sync_metadata(VOICE) == []  # a look at the table never waits


def test_retranscribe_one_clip(home, faster_whisper_model_path, monkeypatch, word_error_rate):
    clip = dataset_edit.list_clips(VOICE)[0]
    dataset_edit.edit_text(VOICE, clip["audio_file"], "Something else entirely.")
    again = dataset_edit.retranscribe_clip(VOICE, clip["audio_file"], whisper_model=faster_whisper_model_path)
    assert again["origin"] == "retranscribed" and word_error_rate(clip["whisper_text"], again["text"]) < 0.25
    details = again["retranscription"]
    assert details["model"] == faster_whisper_model_path and details["avg_logprob"] < 0
    assert details["words"] and all(0 <= p <= 1 for _, p in details["words"])
    assert csv_rows(home)[clip["audio_file"]]["text"] == again["text"]
    saved = json.loads((home / "datasets" / VOICE / "edits.json").read_text())["clips"][clip["key"]]
    assert saved["origin"] == "whisper" and saved["whisper"]["backend"] == "faster-whisper"

    # No words heard, or a model that cannot load: an error, and the text stays.
    monkeypatch.setattr(transcribe, "transcribe", lambda *a, **k: [Segment(0.0, 1.0, " ♪", [], -0.5, 0.9)])
    with pytest.raises(DatasetEditError, match="heard no words"):
        dataset_edit.retranscribe_clip(VOICE, clip["audio_file"], whisper_model=faster_whisper_model_path)
    monkeypatch.setattr(transcribe, "load_model", lambda *a, **k: (_ for _ in ()).throw(OSError("no network")))
    with pytest.raises(DatasetEditError, match="cannot load the faster-whisper model 'tiny'"):
        dataset_edit.retranscribe_clip(VOICE, clip["audio_file"], whisper_model="tiny")
    with pytest.raises(transcribe.TranscriptionError, match="unknown"):
        dataset_edit.retranscribe_clip(VOICE, clip["audio_file"], backend="whisperx")
    assert csv_rows(home)[clip["audio_file"]]["text"] == again["text"]


def test_split_stays_put_when_clips_are_added_or_excluded():
    def clips(count):
        return [{"key": f"k{i}", "audio_file": f"wavs/c_{i:05d}.wav"} for i in range(count)]

    base = clips(40)
    dataset_edit.assign_splits(base, 0.15, seed=3)
    assert [c["split"] for c in base].count("validation") == 6
    more = clips(41)
    dataset_edit.assign_splits(more, 0.15, seed=3)
    assert sum(a["split"] != b["split"] for a, b in zip(base, more, strict=False)) == 0  # round(6.15) = 6
    excluded = clips(40)
    excluded[next(i for i, c in enumerate(base) if c["split"] == "train")]["excluded"] = True
    dataset_edit.assign_splits(excluded, 0.15, seed=3)
    changed = [(a["split"], b["split"]) for a, b in zip(base, excluded, strict=True) if a["split"] != b["split"]]
    assert changed == [("train", "excluded")]
    lone = clips(2)
    lone[0]["excluded"] = True
    dataset_edit.assign_splits(lone, 0.5, seed=0)
    assert [c["split"] for c in lone] == ["excluded", "train"]  # one included clip: nothing to hold out


# --- quality ---------------------------------------------------------------------------------


def test_clip_audio_stats_measure_edge_silence_and_clipping():
    rate = 22_050
    noise = 0.2 * (torch.rand(rate, generator=torch.Generator().manual_seed(0)) - 0.5)
    clip = torch.cat([torch.zeros(rate), noise, 1e-4 * torch.ones(round(0.7 * rate))])
    stats = dataset_quality.clip_audio_stats(clip, rate)
    assert stats["leading_silence"] == pytest.approx(1.0, abs=0.011)
    assert stats["trailing_silence"] == pytest.approx(0.7, abs=0.011)
    assert stats["clipping"] == 0.0
    raw = clip.clone()
    raw[rate : rate + 441] = 1.0  # 441 samples of 48 951 at full scale
    assert dataset_quality.clip_audio_stats(clip, rate, raw)["clipping"] == pytest.approx(441 / clip.numel(), rel=1e-3)
    silent = dataset_quality.clip_audio_stats(torch.zeros(rate), rate)
    assert silent["leading_silence"] == silent["trailing_silence"] == 1.0

    segments = [
        Segment(0.0, 3.0, " a b c", [Word(0.0, 0.5, " a", 0.9), Word(1.0, 1.5, " b", 0.2), Word(2.6, 3.0, " c", 0.1)])
    ]
    assert dataset_quality.word_confidence(segments, 0.0, 2.0) == {"min_word_probability": 0.2, "low_words": ["b"]}
    assert dataset_quality.word_confidence(segments, 5.0, 6.0) == {"min_word_probability": None, "low_words": []}


@pytest.fixture
def crafted(timbre_home, espeak_wav, monkeypatch) -> dict[str, float]:
    """voices/crafted/take.wav: 1.5 s of silence, a sentence, a quiet sentence, a clipped one
    (2.5 s apart, so each is a clip), and a fake Whisper that places the first word at 0 s and
    is unsure of the quiet sentence. Returns each sentence's start time (seconds)."""
    rate = 22_050
    parts, starts, segments = [torch.zeros(round(1.5 * rate))], {}, []
    texts = {
        "plain": "The cat sat on the warm mat.",
        "quiet": "A small boat drifted slowly.",
        "loud": "Please bring me water.",
    }
    position = 1.5
    for name, text in texts.items():
        spoken = audio.load_audio(espeak_wav(text, timbre_home / f"{name}.wav"), rate)
        spoken = {"plain": spoken, "quiet": 0.15 * spoken, "loud": (8 * spoken).clamp(-1, 1)}[name]
        starts[name] = position
        seconds = spoken.numel() / rate
        first = 0.0 if name == "plain" else position  # Whisper's first word often starts at 0
        sure = 0.2 if name == "quiet" else 0.95
        words = [Word(first, position + seconds, " " + text, sure)]
        segments.append(Segment(first, position + seconds, " " + text, words, -1.4 if name == "quiet" else -0.2, 0.0))
        parts += [spoken, torch.zeros(round(2.5 * rate))]
        position += seconds + 2.5
    folder = timbre_home / "voices" / "crafted"
    folder.mkdir(parents=True)
    audio.save_wav(folder / "take.wav", torch.cat(parts), rate)
    monkeypatch.setattr(transcribe, "transcribe", lambda *a, **k: segments)
    monkeypatch.setattr(transcribe, "load_model", lambda *a, **k: None)
    prepare_dataset("crafted", whisper_model="tiny.en", validation_fraction=0.0, log=lambda _: None)
    return starts


def test_quality_report_flags_what_to_listen_to(crafted):
    report = dataset_quality.quality_report("crafted")
    flags = {row["audio_file"]: row["flags"] for row in report["per_clip"]}
    plain, quiet, loud = sorted(flags)
    assert any(f.startswith("silence at start 1.") for f in flags[plain]), flags
    assert any(f.startswith("quiet -") for f in flags[quiet]) and "low confidence -1.40" in flags[quiet]
    assert any(f.startswith("unsure: A small boat") for f in flags[quiet])
    assert any(f.startswith("clipping ") for f in flags[loud]), flags
    assert report["categories"]["clipping"] == [loud] and report["categories"]["low confidence"] == [quiet]
    assert plain in report["categories"]["edge silence"] and quiet in report["categories"]["loudness"]
    assert (report["clips"], report["included"], report["flagged"]) == (3, 3, 3)
    durations = report["durations"]
    assert sum(durations["counts"]) == 3 and durations["edges"][0] == 0.0 and durations["edges"][-1] >= 11.5
    assert len(durations["edges"]) == len(durations["counts"]) + 1
    assert durations["min"] <= durations["median"] <= durations["max"]

    # A typed transcript has been checked: Whisper's doubts no longer flag it. Excluded clips
    # leave the histogram and the count of flagged clips but keep their flags.
    dataset_edit.edit_text("crafted", quiet, "A small boat drifted slowly.")
    dataset_edit.set_excluded("crafted", loud)
    report = dataset_quality.quality_report("crafted")
    flags = {row["audio_file"]: row["flags"] for row in report["per_clip"]}
    assert not any(f.startswith(("low confidence", "unsure")) for f in flags[quiet])
    assert (report["included"], report["excluded"], sum(report["durations"]["counts"])) == (2, 1, 2)
    assert any(f.startswith("clipping") for f in flags[loud])


def test_quality_report_measures_clips_of_an_older_report(home):
    """A report.json written before the quality figures existed: they are measured in the wavs."""
    path = home / "datasets" / VOICE / "report.json"
    report = json.loads(path.read_text())
    for clip in report["per_clip"]:
        for name in ("key", "clipping", "leading_silence", "trailing_silence", "low_words", "rms_dbfs"):
            clip.pop(name)
    # Its split came from an older rule: it is kept as recorded, never redrawn.
    del report["validation_fraction"], report["seed"]
    train = next(c for c in report["per_clip"] if c["split"] == "train")
    validation = next(c for c in report["per_clip"] if c["split"] == "validation")
    train["split"], validation["split"] = "validation", "train"
    path.write_text(json.dumps(report))
    recorded = {c["audio_file"]: c["split"] for c in report["per_clip"]}
    dataset_edit.set_excluded(VOICE, train["audio_file"])
    assert {k: v["split"] for k, v in csv_rows(home).items()} == {
        k: v for k, v in recorded.items() if k != train["audio_file"]
    }
    dataset_edit.set_excluded(VOICE, train["audio_file"], excluded=False)
    assert {k: v["split"] for k, v in csv_rows(home).items()} == recorded

    quality = dataset_quality.quality_report(VOICE)
    for row in quality["per_clip"]:
        assert row["clipping"] == 0.0 and 0 <= row["leading_silence"] < 0.5 and -21 < row["rms_dbfs"] < -10
    assert math.isclose(quality["durations"]["total"], sum(r["duration"] for r in quality["per_clip"]), abs_tol=0.01)
    # Keys come from the recordings' hashes, as prepare makes them: edits still match.
    clip = dataset_edit.list_clips(VOICE)[0]
    assert clip["key"].startswith(transcribe.file_sha256(home / "voices" / VOICE / clip["source"]))


def test_engine_edit_and_quality_modules_never_import_gradio():
    """engine.dataset.edit and engine.dataset.quality never import gradio (house rule 1)."""
    code = "import sys, engine.dataset.edit, engine.dataset.quality; print('gradio' in sys.modules)"
    out = subprocess.run([".venv/bin/python", "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    assert out.stdout.strip() == "False"
