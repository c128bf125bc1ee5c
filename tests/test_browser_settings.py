"""Settings in a real browser: an app with no base model says so, shows the licence, and only
offers the download once it is accepted; Whisper defaults survive a restart of the app."""

from __future__ import annotations

from browser import expect, launch_app, shot, textbox


def test_missing_base_model_licence_and_settings_that_survive_a_restart(browser, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    missing = tmp_path / "no-model-here"
    with launch_app(home, missing) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_role("tab", name="Settings").click()
        status = page.locator("#settings-model-status")
        expect(status).to_contain_text("Not ready", timeout=60_000)
        for name in ("model.pth", "config.json", "vocab.json", "dvae.pth", "mel_stats.pth"):
            expect(status).to_contain_text(name)
        expect(page.locator("#settings-license")).to_contain_text("Coqui Public Model License")
        expect(page.locator("#settings-license")).to_contain_text("non-commercial")
        download = page.locator("#settings-download")
        expect(download).to_be_disabled()
        page.locator("#settings-accept input[type=checkbox]").check()
        expect(download).to_be_enabled()
        shot(page, "settings-missing-model")
        textbox(page, "settings-whisper-model").fill("/models/my-whisper")
        textbox(page, "settings-whisper-model").press("Tab")
        expect(page.locator("#settings-whisper-model textarea, #settings-whisper-model input")).to_have_value(
            "/models/my-whisper"
        )
        saved = home / "settings.json"
        for _ in range(100):  # the input event saves settings.json
            if saved.is_file() and "/models/my-whisper" in saved.read_text():
                break
            page.wait_for_timeout(200)
        page.close()
    assert "/models/my-whisper" in saved.read_text()

    with launch_app(home, missing) as url:
        page = browser.new_page()
        page.goto(url)
        page.get_by_role("tab", name="Settings").click()
        expect(textbox(page, "settings-whisper-model")).to_have_value("/models/my-whisper", timeout=60_000)
        page.get_by_role("tab", name="Dataset").click()
        expect(textbox(page, "dataset-whisper-model")).to_have_value("/models/my-whisper")
        page.close()
