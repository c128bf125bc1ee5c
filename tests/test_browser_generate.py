"""The Generate tab in a real headless Chromium (Playwright): reference clips, candidates,
cached conditioning latents, streaming, the history and "generate again", export and import.

The app runs on a home prepared beforehand: conftest's espeak-ng dataset of voice ``anna`` and
a finished run ``ft`` of the tiny random model whose checkpoints hold perturbed GPT weights
(tests/generate_helpers.py), so no training happens here. Speech is capped at half a second per
sentence: the tiny model's HiFi-GAN decoder is what takes the time on CPU. Screenshots go to
``test-artifacts/browser/generate-*.png``.
"""

from __future__ import annotations

import re
import shutil
import time
import zipfile

import pytest
from browser import combobox, expect, launch_app, no_gradio_error, set_number, shot, textbox
from generate_helpers import copy_home, fake_run

VOICE = "anna"
SPEAK_TIMEOUT = 90_000


@pytest.fixture(scope="module")
def generate_home(dataset_home, tiny_model, tmp_path_factory):
    home = copy_home(dataset_home, tmp_path_factory.mktemp("generate-browser") / "home")
    fake_run(home, tiny_model, VOICE, "ft", steps=(2, 4))
    return home


def choose(page, elem_id: str, option: str) -> None:
    """Pick ``option`` in a Gradio dropdown (single or multiselect)."""
    combobox(page, elem_id).click()
    page.get_by_role("option", name=option, exact=True).click()


def player(page, elem_id: str):
    return page.locator(f"#{elem_id} [data-testid=download-link]")


def test_generate_tab_candidates_history_export_import(generate_home, tiny_model, browser):
    if shutil.which("ffmpeg") is None:  # Gradio encodes streamed audio with the ffmpeg program
        pytest.fail("ffmpeg is not installed (apt-get install ffmpeg); streaming playback needs it")
    started = time.monotonic()
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    with launch_app(generate_home, tiny_model) as url:
        page.goto(url)
        page.get_by_role("tab", name="Generate").click()
        expect(combobox(page, "generate-voice")).to_have_value(VOICE, timeout=60_000)
        expect(combobox(page, "generate-run")).to_have_value("ft")  # the voice's run is the default
        expect(page.locator("#generate-references")).to_contain_text("Empty: the voice's recording")

        # Two reference clips, two candidates of two sentences, short speech.
        choose(page, "generate-references", "reference.wav (recording)")
        choose(page, "generate-references", "clip1.wav (dataset clip)")
        page.keyboard.press("Escape")
        textbox(page, "generate-text").fill("Hello there. This is the second sentence.")
        textbox(page, "generate-seed").fill("11")
        set_number(page, "generate-candidates", 2)
        page.get_by_text("Sampling", exact=True).click()
        set_number(page, "generate-max-seconds", 0.5)
        page.locator("#generate-button").click()
        expect(page.locator("#generate-info")).to_contain_text("2 candidates (seed 11, 12)", timeout=SPEAK_TIMEOUT)
        no_gradio_error(page)
        expect(page.locator("#generate-info")).to_contain_text("conditioning latents computed and cached")
        for elem_id, seed in (("generate-audio", 11), ("generate-candidate-2", 12)):
            expect(player(page, elem_id)).to_have_attribute("href", re.compile(r"\.wav$"))
            expect(page.locator(f"#{elem_id}")).to_contain_text(f"seed {seed}")
        expect(page.locator("#generate-candidate-3")).to_be_hidden()
        outputs = page.locator("#generate-outputs")
        expect(outputs).to_contain_text("2 of 2")
        expect(outputs).to_contain_text("step-0000004")
        shot(page, "generate-1-candidates")

        # The same references and weights again: the latents come from the cache.
        set_number(page, "generate-candidates", 1)
        textbox(page, "generate-text").fill("Once more.")
        page.locator("#generate-button").click()
        expect(page.locator("#generate-info")).to_contain_text("1 output (seed 11)", timeout=SPEAK_TIMEOUT)
        expect(page.locator("#generate-info")).to_contain_text("conditioning latents from the cache")
        expect(page.locator("#generate-candidate-2")).to_be_hidden()

        # Another checkpoint, streamed: other GPT weights give other latents.
        choose(page, "generate-checkpoint", "step-0000002")
        page.locator("#generate-stream-toggle input").check()
        expect(page.locator("#generate-stream")).to_be_visible()
        textbox(page, "generate-text").fill("Streaming now.")
        set_number(page, "generate-max-seconds", 1.5)
        page.locator("#generate-button").click()
        expect(page.locator("#generate-info")).to_contain_text("1 output (seed 11)", timeout=SPEAK_TIMEOUT)
        expect(page.locator("#generate-info")).to_contain_text("conditioning latents computed and cached")
        no_gradio_error(page)
        expect(page.locator("#generate-stream audio")).to_be_attached()
        # The streamed chunks (32 codes in chunks of 20) arrived and played through in the browser.
        page.wait_for_function(
            "() => { const a = document.querySelector('#generate-stream audio');"
            " return a && a.duration > 1.2 && a.currentTime > 1.2; }",
            timeout=30_000,
        )
        expect(outputs).to_contain_text("step-0000002")
        page.locator("#generate-stream-toggle input").uncheck()

        # History: select the second candidate, then fill the form from its settings.
        outputs.get_by_role("row").filter(has_text="2 of 2").get_by_role("gridcell").first.click()
        details = page.locator("#generate-history-details")
        expect(details).to_contain_text("seed 12")
        expect(details).to_contain_text("clip1.wav")
        expect(player(page, "generate-history-audio")).to_have_attribute("href", re.compile(r"-12\.wav$"))
        page.locator("#generate-reuse").click()
        expect(textbox(page, "generate-seed")).to_have_value("12")
        expect(textbox(page, "generate-text")).to_have_value("Hello there. This is the second sentence.")
        expect(combobox(page, "generate-checkpoint")).to_have_value("step-0000004")
        expect(page.locator("#generate-references")).to_contain_text("clip1.wav (dataset clip)")
        shot(page, "generate-2-history")

        # Export the run at step-0000004 and import the zip back as a model.
        page.locator("#generate-export").click()
        expect(page.locator("#generate-export-status")).to_contain_text("Exported", timeout=SPEAK_TIMEOUT)
        no_gradio_error(page)
        zip_path = generate_home / "outputs" / VOICE / "exports" / "anna-ft-step-0000004.zip"
        with zipfile.ZipFile(zip_path) as archive:
            assert {"model.pth", "config.json", "speakers_xtts.pth", "MODEL_CARD.md"} <= set(archive.namelist())
        # Served from outputs/ itself (a static path), not copied into Gradio's cache.
        link = page.locator("#generate-export-file a").first
        expect(link).to_have_attribute("href", re.compile(r"outputs/anna/exports/anna-ft-step-0000004\.zip$"))
        page.locator("#generate-import-file input[type=file]").set_input_files(str(zip_path))
        expect(textbox(page, "generate-import-name")).to_have_value("anna-ft-step-0000004")
        page.locator("#generate-import").click()
        expect(page.locator("#generate-import-status")).to_contain_text("Imported as", timeout=60_000)
        no_gradio_error(page)
        shot(page, "generate-3-export")

        choose(page, "generate-run", "anna-ft-step-0000004 (imported)")
        expect(combobox(page, "generate-checkpoint")).to_have_value("latest")
        textbox(page, "generate-text").fill("Speaking with the imported model.")
        page.locator("#generate-button").click()
        expect(page.locator("#generate-info")).to_contain_text("1 output (seed 12)", timeout=SPEAK_TIMEOUT)
        no_gradio_error(page)
        expect(outputs).to_contain_text("imported:anna-ft-step-0000004")
        page.locator("#generate-info").scroll_into_view_if_needed()
        shot(page, "generate-4-imported")
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"
    print(f"generate browser flow took {time.monotonic() - started:.0f} s")
