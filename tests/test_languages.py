"""engine.languages, and the dataset's language carried into ``engine config`` and generation."""

from __future__ import annotations

import json

import pytest
import yaml

from engine import cli, languages, paths
from engine.config import ConfigError, TrainConfig, new_run_config
from engine.generate import synthesis as generate


def write_report(voice: str, language) -> None:
    """datasets/<voice>/report.json holding only what these tests read (the dataset step writes
    the majority language Whisper detected there, as a Whisper code)."""
    folder = paths.dataset_dir(voice)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"voice": voice, "clips": 3, "language": language}))


def test_the_17_languages_are_xtts_v2s():
    from TTS.tts.configs.xtts_config import XttsConfig

    assert languages.CODES == tuple(XttsConfig().languages)
    assert len(languages.CODES) == 17
    assert languages.label("es") == "Spanish (es)"
    assert ("Chinese (zh-cn)", "zh-cn") in languages.choices()
    assert [code for _, code in languages.choices()] == list(languages.CODES)


@pytest.mark.parametrize(
    ("whisper", "xtts"),
    [
        ("es", "es"), ("en", "en"), ("zh", "zh-cn"), ("zh-cn", "zh-cn"), ("ZH_CN", "zh-cn"), ("pt-BR", "pt"),
        (" ja ", "ja"), ("Spanish", "es"), ("sv", None), ("yue", None), ("auto", None), ("", None), (None, None),
    ],
)  # fmt: skip
def test_to_xtts(whisper, xtts):
    assert languages.to_xtts(whisper) == xtts


def test_to_whisper():
    assert languages.to_whisper("zh-cn") == "zh"
    assert languages.to_whisper("es") == "es"


def test_dataset_language_from_report(timbre_home):
    assert languages.dataset_language("anna") is None  # no dataset
    assert languages.dataset_language(None) is None
    assert languages.dataset_language("../etc") is None  # a name that can have no dataset
    for recorded, expected in (("es", "es"), ("zh", "zh-cn"), ("en", "en"), (None, None), ("auto", None)):
        write_report("anna", recorded)
        assert languages.dataset_language("anna") == expected, recorded
    write_report("anna", "sv")
    assert languages.recorded_language("anna") == "sv" and languages.dataset_language("anna") is None
    with pytest.raises(languages.LanguageError, match="language: .*'sv'.*cannot speak"):
        languages.default_language("anna")
    (paths.dataset_dir("anna") / "report.json").write_text("{not json")
    assert languages.dataset_language("anna") is None
    assert languages.default_language("anna") == "en"
    (paths.dataset_dir("anna") / "report.json").write_text("[1, 2]")
    assert languages.dataset_language("anna") is None


def test_train_config_refuses_a_language_xtts_cannot_speak():
    assert TrainConfig(language="zh-cn").language == "zh-cn"
    with pytest.raises(ConfigError, match=r"^language: must be one of .*en, es.*\(got 'sv'\)"):
        TrainConfig(language="sv")
    with pytest.raises(ConfigError, match="for Chinese use 'zh-cn'"):
        TrainConfig(language="zh")
    with pytest.raises(ConfigError, match="language"):
        TrainConfig.from_dict({"language": "Klingon"})


def test_new_run_config_takes_the_dataset_language(timbre_home):
    assert new_run_config("anna", "r").language == "en"  # no dataset yet
    write_report("anna", "es")
    assert new_run_config("anna", "r", epochs=3).language == "es"
    assert new_run_config("anna", "r", language="fr").language == "fr"
    write_report("anna", "sv")
    with pytest.raises(ConfigError, match="language: .*'sv'.*choose the language explicitly"):
        new_run_config("anna", "r")
    assert new_run_config("anna", "r", language="en").language == "en"


def test_engine_config_command_uses_the_dataset_language(timbre_home, capsys):
    write_report("anna", "es")
    assert cli.main(["config", "anna", "spanish", "--epochs", "2"]) == 0
    written = yaml.safe_load((paths.run_dir("anna", "spanish") / "train.yaml").read_text())
    assert written["language"] == "es"

    assert cli.main(["config", "anna", "english", "--language", "en"]) == 0  # explicit wins
    assert TrainConfig.load(paths.run_dir("anna", "english") / "train.yaml").language == "en"

    capsys.readouterr()
    assert cli.main(["config", "anna", "swedish", "--language", "sv"]) == 1
    assert "error: language: must be one of" in capsys.readouterr().err
    assert not paths.run_dir("anna", "swedish").exists()

    write_report("anna", "sv")
    assert cli.main(["config", "anna", "auto-swedish"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: language:") and "'sv'" in err and "XTTS-v2 cannot speak" in err
    assert not paths.run_dir("anna", "auto-swedish").exists()


def test_generation_language_defaults_to_the_run_then_the_dataset(timbre_home):
    assert generate.default_language("anna") == "en"
    write_report("anna", "es")
    assert generate.default_language("anna") == "es"
    assert generate.default_language("anna", generate.BASE_MODEL) == "es"
    assert generate.default_language("anna", "imported:other") == "es"
    TrainConfig(voice="anna", run="german", language="de").save_new()
    assert generate.default_language("anna", "german") == "de"
    assert generate.default_language("anna", "no-such-run") == "es"
    with pytest.raises(generate.GenerationError, match="language: .*got 'sv'"):
        generate.generate_candidates("anna", "Hola.", language="sv")
