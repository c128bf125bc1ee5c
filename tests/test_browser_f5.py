"""The second family in the browser: with an F5-TTS base model in the Settings tab, a new run's
form is F5's (its recipe, its freeze groups, no XTTS-only fields), typing an XTTS folder switches
it back, an F5 run trains from the Training tab with its flow-matching loss plotted, and the
Generate tab speaks with it."""

from __future__ import annotations

import shutil

import pytest
from browser import combobox, expect, launch_app, no_gradio_error, set_number, shot, textbox

from engine import runs

VOICE = "anna"
PLOT = "#training-plot .timbre-plot"
STATE = "#training-status strong"


@pytest.fixture(scope="module")
def f5_home(dataset_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("f5-browser-home")
    shutil.copytree(dataset_home, home, dirs_exist_ok=True)
    return home


def test_f5_run_from_the_training_tab(f5_home, tiny_f5_model, tiny_model, page, monkeypatch):
    monkeypatch.setenv("TIMBRE_HOME", str(f5_home))
    with launch_app(f5_home, tiny_f5_model) as url:
        page.goto(url)
        page.get_by_role("tab", name="Training").click()
        expect(combobox(page, "training-voice")).to_have_value(VOICE, timeout=60_000)
        expect(combobox(page, "train-family")).to_have_value("F5-TTS v1", timeout=30_000)
        expect(page.locator("#train-learning-rate input")).to_have_value("0.00001")
        expect(page.locator("#train-text-loss-weight")).to_be_hidden()
        page.get_by_role("button", name="Losses").click()
        expect(page.locator("#train-freeze")).to_contain_text("transformer_blocks")
        expect(page.locator("#training-yaml")).to_contain_text("family: f5")
        expect(page.locator("#training-suggestion")).to_contain_text("batch_frames 3200")  # F5 counts frames

        # an XTTS-v2 folder typed in: the form becomes XTTS's, and back again
        base = textbox(page, "train-base-model")
        base.fill(str(tiny_model))
        base.press("Enter")
        expect(combobox(page, "train-family")).to_have_value("XTTS-v2")
        expect(page.locator("#train-text-loss-weight")).to_be_visible()
        expect(page.locator("#training-yaml")).to_contain_text("lr_schedule: multistep")
        base.fill(str(tiny_f5_model))
        base.press("Tab")
        expect(combobox(page, "train-family")).to_have_value("F5-TTS v1")
        expect(page.locator("#training-yaml")).to_contain_text("lr_schedule: warmup_linear")

        textbox(page, "training-run-name").fill("flow")
        set_number(page, "train-epochs", 2)
        set_number(page, "train-batch-frames", 500)
        page.locator("#train-evaluate input").uncheck()
        page.locator("#training-start").click()
        expect(page.locator(STATE)).to_have_text("finished", timeout=120_000)
        expect(page.locator('[id="curve-flow-flow-train"]')).to_be_attached(timeout=30_000)
        expect(page.locator("#training-plot")).to_contain_text("Flow-matching loss")
        assert runs.latest_complete_checkpoint(f5_home / "training" / VOICE / "flow") is not None
        no_gradio_error(page)
        shot(page, "training-f5")
