"""Checkpoint scores in headless Chromium: the Training tab of a run whose checkpoints were
scored shows the best in its table and text, the curves, and a listening grid whose cells play;
the Generate tab offers "best" among the checkpoints. The scores are written by hand
(tests/test_webui_eval.py's ``scored_run``), no model runs."""

from __future__ import annotations

import pytest
from browser import combobox, expect, launch_app, no_gradio_error, shot, textbox
from generate_helpers import copy_home
from test_webui_eval import scored_run

VOICE = "anna"


@pytest.fixture(scope="module")
def eval_home(dataset_home, tmp_path_factory):
    home = copy_home(dataset_home, tmp_path_factory.mktemp("eval-browser") / "home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIMBRE_HOME", str(home))
        scored_run(VOICE, "r", steps=(2, 4))
    return home


def audio_count(page) -> int:
    return page.locator("#training-eval-grid audio").count()


def test_training_tab_shows_scores_and_plays_the_grid(eval_home, tiny_model, page):
    with launch_app(eval_home, tiny_model) as url:
        page.goto(url)
        page.get_by_role("tab", name="Training").click()
        expect(combobox(page, "training-voice")).to_have_value(VOICE, timeout=60_000)
        box = textbox(page, "training-run-name")
        box.fill("r")
        box.press("Enter")
        expect(page.locator("#training-plot .timbre-plot")).to_have_attribute("data-runs", "r")

        table = page.locator("#training-eval-table")
        expect(table).to_contain_text("★ best")
        expect(table.get_by_role("row").filter(has_text="★ best")).to_contain_text("step-0000004")
        expect(table).to_contain_text("base model")
        expect(page.locator("#training-eval-text")).to_contain_text("Best checkpoint: step-0000004")
        expect(page.locator("#training-eval-plot .timbre-eval-plot")).to_have_attribute("data-best", "step-0000004")
        expect(page.locator('#training-eval-plot [id="eval-best-secs"]')).to_be_attached()

        # The grid: base model and the best, two sentences each; a cell plays its WAV.
        grid = page.locator("#training-eval-grid .timbre-eval-grid")
        expect(grid).to_have_attribute("data-columns", "baseline,step-0000004")
        expect(page.locator("#training-eval-grid audio")).to_have_count(4)
        page.locator("#training-eval-grid audio").first.scroll_into_view_if_needed()
        page.locator("#training-eval-grid audio").nth(1).evaluate("a => a.play()")
        page.wait_for_function(
            "() => { const a = document.querySelectorAll('#training-eval-grid audio')[1];"
            " return a.duration > 0.2 && (a.ended || a.currentTime > 0.05); }",
            timeout=20_000,
        )
        no_gradio_error(page)

        # Another checkpoint beside them: a third column.
        combobox(page, "training-eval-listen").click()
        page.get_by_role("option", name="step-0000002", exact=True).click()
        page.keyboard.press("Escape")
        expect(grid).to_have_attribute("data-columns", "baseline,step-0000004,step-0000002")
        expect(page.locator("#training-eval-grid audio")).to_have_count(6)
        shot(page, "eval-1-training")

        # Generate offers the best checkpoint by name, its value "best".
        page.get_by_role("tab", name="Generate").click()
        expect(combobox(page, "generate-run")).to_have_value("r", timeout=30_000)
        combobox(page, "generate-checkpoint").click()
        page.get_by_role("option", name="best (step-0000004, by score)").click()
        expect(combobox(page, "generate-checkpoint")).to_have_value("best (step-0000004, by score)")
        no_gradio_error(page)
