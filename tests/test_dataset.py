"""engine.dataset.prepare and engine.dataset.clips: recordings → clips, csv files and report, on real speech."""

from __future__ import annotations

import csv
import json
import shutil
import time
import wave
from pathlib import Path

import pytest
import torch

from engine.dataset import edit as dataset_edit
from engine.dataset import prepare as dataset
from engine.dataset.clips import MAX_CLIP_SECONDS, MIN_CLIP_SECONDS, plan_clips
from engine.dataset.prepare import DatasetError, load_clips, prepare_command, prepare_dataset
from engine.paths import InvalidNameError
from engine.speech import transcribe
from engine.speech.transcribe import Segment, Word

VOICE = "speaker"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, speech_voice, faster_whisper_model_path):
    """A dataset made once from ``speech_voice`` with faster-whisper tiny.en:
    (home folder, report, logged lines, progress calls)."""
    home = tmp_path_factory.mktemp("home")
    speech_voice.install(home, VOICE)
    lines, calls = [], []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIMBRE_HOME", str(home))
        started = time.perf_counter()
        report = prepare_dataset(
            VOICE,
            whisper_model=faster_whisper_model_path,
            progress=lambda fraction, desc: calls.append((fraction, desc)),
            log=lines.append,
        )
        seconds = time.perf_counter() - started
    print(
        f"\nprepare with faster-whisper tiny.en: {seconds:.2f} s for {report.audio_seconds:.1f} s"
        f" of audio = {seconds / report.audio_seconds:.3f} s per second of audio"
        f" (transcription alone {report.transcription_seconds / report.audio_seconds:.3f})"
    )
    return home, report, lines, calls


@pytest.fixture
def prepared_copy(prepared, tmp_path, monkeypatch):
    """A private copy of the prepared home, with TIMBRE_HOME pointing at it."""
    home = tmp_path / "home"
    shutil.copytree(prepared[0], home)
    monkeypatch.setenv("TIMBRE_HOME", str(home))
    return home


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle, delimiter="|"))


def test_clips_are_22khz_mono_16bit_of_1_to_11_5_seconds(prepared):
    home, report, _, _ = prepared
    wavs = sorted((home / "datasets" / VOICE / "wavs").iterdir())
    assert len(wavs) == report.clips >= 4
    for path in wavs:
        with wave.open(str(path), "rb") as reader:
            assert reader.getframerate() == 22_050
            assert (reader.getnchannels(), reader.getsampwidth()) == (1, 2)
            assert MIN_CLIP_SECONDS <= reader.getnframes() / 22_050 <= MAX_CLIP_SECONDS
    stems = {p.name.rsplit("_", 1)[0] for p in wavs}
    assert stems == {"market", "morning", "piano", "river"}
    assert all(p.name.rsplit("_", 1)[1][:5].isdigit() for p in wavs)


def test_csv_files_follow_the_coqui_formatter(prepared):
    home, report, _, _ = prepared
    folder = home / "datasets" / VOICE
    rows = {}
    for split in ("train", "validation"):
        table = _read_csv(folder / f"{split}.csv")
        assert table[0] == ["audio_file", "text", "speaker_name"]
        rows[split] = table[1:]
        for audio_file, text, speaker in rows[split]:
            assert audio_file.startswith("wavs/") and (folder / audio_file).is_file()
            assert text.strip() and speaker == VOICE
    assert len(rows["train"]) == report.train and len(rows["validation"]) == report.validation
    assert report.validation >= 1 and report.train + report.validation == report.clips
    on_disk = {f"wavs/{p.name}" for p in (folder / "wavs").iterdir()}
    assert on_disk == {r[0] for r in rows["train"] + rows["validation"]}

    from TTS.tts.datasets.formatters import coqui  # what XTTS training reads

    items = coqui(str(folder), "train.csv")
    assert len(items) == report.train and items[0]["speaker_name"] == VOICE


def test_transcripts_match_the_spoken_text(prepared, speech_voice, word_error_rate):
    _, report, _, _ = prepared
    for name, spoken in speech_voice.texts.items():
        text = " ".join(c.text for c in report.per_clip if c.source == name)
        assert word_error_rate(spoken, text) < 0.3, (name, text)


def test_cuts_fall_between_words(prepared, faster_whisper_model_path, word_error_rate):
    """Each clip, recognised again on its own, still reads as its transcript."""
    home, report, _, _ = prepared
    model = faster_whisper_model_path
    for clip in report.per_clip:
        audio = dataset.load_audio(home / "datasets" / VOICE / clip.audio_file, 16_000)
        heard = " ".join(s.text for s in transcribe.transcribe(audio.numpy(), model=model))
        assert word_error_rate(clip.text, heard) < 0.25, (clip.audio_file, heard)


def test_report_lists_skipped_file_and_clip_statistics(prepared):
    home, report, lines, calls = prepared
    saved = json.loads((home / "datasets" / VOICE / "report.json").read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))
    for key in ("clips", "train", "validation", "total_seconds", "skipped", "backend", "model"):
        assert key in saved
    assert saved["language"] == "en" and saved["seconds_taken"] > 0
    assert [s["file"] for s in saved["skipped"]] == ["notes.wav"]
    assert "cannot be decoded" in saved["skipped"][0]["reason"]
    assert any("notes.wav" in line and "cannot be decoded" in line for line in lines)
    assert report.transcribed == 4 and report.reused == 0 and report.recordings == 5
    total = sum(c.duration for c in report.per_clip)
    assert report.total_seconds == pytest.approx(total, abs=0.01)
    for clip in report.per_clip:
        assert -21.0 < clip.rms_dbfs < -10.0 and clip.peak <= 10 ** (-1 / 20) + 1e-3
        assert clip.avg_logprob < 0 and clip.end - clip.start > 0
    fractions = [fraction for fraction, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("market.wav" in desc for _, desc in calls)


def test_transcription_cache_is_keyed_by_file_hash_backend_and_model(prepared):
    home, report, _, _ = prepared
    cache = json.loads((home / "datasets" / VOICE / "transcription.json").read_text())
    entries = cache["entries"]
    assert sorted(e["file"] for e in entries.values()) == sorted(
        ["market.wav", "morning.flac", "piano.mp3", "river.wav"]
    )
    for key, entry in entries.items():
        digest, backend, model, language = key.split(":")
        assert len(digest) == 64 and backend == "faster-whisper" and language == "auto"
        assert model == report.model and entry["seconds_taken"] > 0 and entry["segments"]
        assert entry["language"] == "en" and entry["speech"]  # an English-only model: English


def test_load_clips_returns_rows_with_split_and_duration(prepared, monkeypatch):
    home, report, _, _ = prepared
    monkeypatch.setenv("TIMBRE_HOME", str(home))
    rows = load_clips(VOICE)
    assert len(rows) == report.clips
    assert {r["split"] for r in rows} == {"train", "validation"}
    assert all(Path(r["path"]).is_file() and r["duration"] >= 1.0 for r in rows)
    assert load_clips("nobody") == []


def test_rerun_transcribes_only_new_recordings(
    prepared_copy, speech_voice, espeak_wav, monkeypatch, faster_whisper_model_path
):
    espeak_wav(
        "A new recording arrived today. It was short and clear.",
        prepared_copy / "voices" / VOICE / "zebra.wav",
    )
    (prepared_copy / "datasets" / VOICE / "wavs" / "stale.wav").write_bytes(b"x")
    calls = []
    real = transcribe.transcribe
    monkeypatch.setattr(
        transcribe, "transcribe", lambda *a, **k: calls.append(k.get("word_timestamps", True)) or real(*a, **k)
    )
    report = prepare_dataset(VOICE, whisper_model=faster_whisper_model_path, log=lambda _: None)
    # one first pass (word timestamps) and one batched check of its clips, for zebra.wav alone
    assert calls == [True, False] and report.transcribed == 1 and report.reused == 4
    folder = prepared_copy / "datasets" / VOICE
    names = {f"wavs/{p.name}" for p in (folder / "wavs").iterdir()}
    rows = _read_csv(folder / "train.csv")[1:] + _read_csv(folder / "validation.csv")[1:]
    assert names == {r[0] for r in rows}  # old clips replaced, stale file gone
    assert any(name.startswith("wavs/zebra_") for name in names)
    assert not list(folder.glob(".wavs*")) and not list(folder.glob(".*.tmp"))


def test_split_is_seeded_and_keeps_one_validation_clip():
    def split(count, fraction, seed=0):
        clips = [{"audio_file": f"wavs/c_{i:05d}.wav", "split": "train"} for i in range(count)]
        dataset_edit.assign_splits(clips, fraction, seed)
        return [c["split"] for c in clips]

    assert split(20, 0.15) == split(20, 0.15) and split(20, 0.15).count("validation") == 3
    assert split(20, 0.15) != split(20, 0.15, seed=1)
    assert split(2, 0.01).count("validation") == 1 and split(1, 0.5) == ["train"]
    assert split(3, 0.9).count("train") == 1 and split(5, 0.0).count("validation") == 0


def test_empty_or_missing_folder_is_an_error(timbre_home):
    with pytest.raises(DatasetError, match="no recordings"):
        prepare_dataset("nobody", log=lambda _: None)
    (timbre_home / "voices" / "empty").mkdir(parents=True)
    (timbre_home / "voices" / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError, match="no recordings") as caught:
        prepare_dataset("empty", log=lambda _: None)
    assert caught.value.skipped == [{"file": "readme.txt", "reason": "not a supported audio type (.txt)"}]
    errors = []
    assert prepare_command("empty", log=lambda _: None, error_log=errors.append) == 1
    assert errors and errors[0].startswith("error: no recordings")


def test_invalid_voice_names_are_rejected(timbre_home):
    for name in ("../etc", "", "a/b", ".hidden"):
        with pytest.raises(InvalidNameError):
            prepare_dataset(name)
        with pytest.raises(InvalidNameError):
            load_clips(name)
        assert prepare_command(name, error_log=lambda _: None) == 1


def test_bad_arguments(timbre_home, speech_voice):
    speech_voice.install(timbre_home, VOICE, ["market.wav"])
    with pytest.raises(transcribe.TranscriptionError, match="unknown"):
        prepare_dataset(VOICE, backend="whisperx")
    with pytest.raises(ValueError, match="validation_fraction"):
        prepare_dataset(VOICE, validation_fraction=1.0)
    with pytest.raises(DatasetError, match="no such file"):
        prepare_dataset(VOICE, whisper_model=str(timbre_home / "missing-model"))


def test_all_bad_files_raise_and_keep_the_old_dataset(prepared_copy):
    voice_folder = prepared_copy / "voices" / VOICE
    for path in voice_folder.iterdir():
        if path.name != "notes.wav":
            path.unlink()
    (voice_folder / "blank.wav").write_bytes(b"")
    before = sorted(p.name for p in (prepared_copy / "datasets" / VOICE / "wavs").iterdir())
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(VOICE, log=lambda _: None)
    message = str(caught.value)
    assert "notes.wav" in message and "blank.wav: file is empty" in message
    assert {s["file"] for s in caught.value.skipped} == {"notes.wav", "blank.wav"}
    after = sorted(p.name for p in (prepared_copy / "datasets" / VOICE / "wavs").iterdir())
    assert after == before and (prepared_copy / "datasets" / VOICE / "train.csv").is_file()


def test_openai_whisper_backend_end_to_end(timbre_home, speech_voice, tiny_openai_whisper_checkpoint):
    """The random checkpoint hears no words: the recording is skipped with a reason."""
    speech_voice.install(timbre_home, VOICE, ["market.wav", "notes.wav"])
    lines = []
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(
            VOICE,
            backend="openai-whisper",
            whisper_model=tiny_openai_whisper_checkpoint,
            device="cpu",
            log=lines.append,
        )
    reasons = {s["file"]: s["reason"] for s in caught.value.skipped}
    assert "no usable text" in reasons["market.wav"] and "notes.wav" in reasons
    assert any("market.wav" in line and "no usable text" in line for line in lines)
    cache = json.loads((timbre_home / "datasets" / VOICE / "transcription.json").read_text())
    assert [key.split(":")[1] for key in cache["entries"]] == ["openai-whisper"]


def test_junk_transcripts_are_skipped_not_fatal(timbre_home, speech_voice, monkeypatch):
    speech_voice.install(timbre_home, VOICE, ["market.wav", "morning.flac", "piano.mp3"])
    replies = {
        "market": [Segment(0.0, 3.0, " ♪ ...", [Word(0.0, 3.0, " ♪ ...", 0.5)], -0.3, 0.1)],
        "morning": RuntimeError("backend exploded"),
        "piano": [Segment(0.5, 6.0, " Music helps me relax after a long day.", [], -0.2, 0.0)],
    }
    order = iter(replies.values())

    def fake(*args, **kwargs):
        if not kwargs.get("word_timestamps", True):  # the check of the clip: the same text
            return [Segment(0.5, 6.0, " Music helps me relax after a long day.", [], -0.2, 0.0)]
        reply = next(order)
        if isinstance(reply, Exception):
            raise reply
        return reply

    monkeypatch.setattr(transcribe, "transcribe", fake)
    monkeypatch.setattr(transcribe, "load_model", lambda *a, **k: None)
    monkeypatch.setattr(transcribe, "words_missing", lambda *a, **k: [])  # no second look at the speech
    report = prepare_dataset(VOICE, whisper_model="tiny.en", log=lambda _: None)
    reasons = {s["file"]: s["reason"] for s in report.skipped}
    assert "no usable text" in reasons["market.wav"]
    assert "transcription failed (RuntimeError: backend exploded)" == reasons["morning.flac"]
    assert report.clips == 1 and report.per_clip[0].source == "piano.mp3"
    assert report.validation == 0  # one clip: nothing to hold out


def test_model_that_cannot_load_stops_the_run(timbre_home, speech_voice, monkeypatch):
    speech_voice.install(timbre_home, VOICE, ["market.wav"])

    def fail(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(transcribe, "load_model", fail)
    with pytest.raises(DatasetError, match="The Whisper model 'tiny' is not on this computer"):
        prepare_dataset(VOICE, whisper_model="tiny", log=lambda _: None)
    assert not (timbre_home / "datasets" / VOICE / "report.json").exists()


# --- plan_clips on synthetic transcripts -----------------------------------------------------


def _speech(words: list[tuple[float, float, str]], seconds: float, rate: int = 16_000):
    """Audio with noise where the words are, silence elsewhere, and a one-segment transcript."""
    generator = torch.Generator().manual_seed(0)
    audio = torch.zeros(round(seconds * rate))
    for start, end, _ in words:
        span = slice(round(start * rate), round(end * rate))
        audio[span] = 0.3 * torch.rand(span.stop - span.start, generator=generator) - 0.15
    text = "".join(w for _, _, w in words)
    segment = Segment(words[0][0], words[-1][1], text, [Word(s, e, w, 0.9) for s, e, w in words])
    return [segment], audio


def _assert_no_word_cut(clips, words):
    for start, end, _ in words:
        inside = [c for c in clips if c.start <= start and end <= c.end]
        overlapping = [c for c in clips if c.start < end and start < c.end]
        assert len(inside) == len(overlapping) <= 1


def test_plan_clips_merges_sentences_and_cuts_in_pauses():
    words, t = [], 0.5
    for sentence in range(6):  # six 2-second sentences, 0.6 s apart
        for i in range(5):
            last = i == 4
            words.append((t, t + 0.35, f" w{sentence}{i}{'.' if last else ''}"))
            t += 0.4
        t += 0.6
    segments, audio = _speech(words, t + 0.5)
    clips, dropped = plan_clips(segments, audio, 16_000)
    # a clip takes sentences while it is under 8 s: 7.55 s + one more = 10.15 s, then 2
    assert not dropped and [len(c.text.split()) for c in clips] == [20, 10]
    assert all(MIN_CLIP_SECONDS <= c.end - c.start <= MAX_CLIP_SECONDS for c in clips)
    assert all(c.text.endswith(".") for c in clips)
    _assert_no_word_cut(clips, words)
    pause_start, pause_end = words[19][1], words[20][0]
    assert pause_start < clips[0].end <= clips[1].start < pause_end
    assert clips[0].start == pytest.approx(words[0][0] - 0.2)  # PAD_SECONDS of lead-in


def test_plan_clips_splits_a_long_sentence_between_words():
    words = [(0.2 + 0.5 * i, 0.6 + 0.5 * i, f" w{i}{',' if i == 20 else ''}") for i in range(40)]
    segments, audio = _speech(words, 21.0)
    clips, _ = plan_clips(segments, audio, 16_000)
    assert len(clips) >= 2 and all(c.end - c.start <= MAX_CLIP_SECONDS for c in clips)
    assert clips[0].text.endswith("w20,")  # the comma is the preferred cut
    _assert_no_word_cut(clips, words)


def test_plan_clips_drops_short_and_wordless_stretches():
    words = [(0.2, 0.25, " Hi."), (4.0, 4.3, " ♪")]
    segments, audio = _speech(words, 6.0)
    clips, dropped = plan_clips(segments, audio, 16_000)
    assert clips == [] and len(dropped) == 2
    assert "shorter than 0.5 s" in dropped[0]["reason"]
    assert "no usable text" in dropped[1]["reason"]


def test_a_second_run_on_the_same_voice_is_refused(timbre_home, speech_voice):
    fcntl = pytest.importorskip("fcntl")
    speech_voice.install(timbre_home, VOICE, ["market.wav"])
    folder = timbre_home / "datasets" / VOICE
    folder.mkdir(parents=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(DatasetError, match="another dataset run is in progress"):
            prepare_dataset(VOICE, log=lambda _: None)
