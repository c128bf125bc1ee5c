"""Locked doors: the running app serves nothing the page does not need, refuses strangers off
loopback, bounds uploads, keeps paths out of its error messages, and no form value ever runs as
a command. The apps run as real ``python -m webui`` processes (tests/browser.py's launch_app);
requests go through httpx, which Gradio installs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import zipfile
from pathlib import Path

import httpx
import pytest
import yaml
from browser import launch_app
from gradio.utils import get_upload_folder

from engine import paths
from engine.config import TrainConfig
from engine.generate.export import import_model
from engine.generate.synthesis import generate_speech
from engine.settings import load_settings, save_settings
from engine.training import checkpoint as ckpt
from engine.training import process
from webui import access, serving
from webui.tabs import AppSettings, browser_text, engine_errors
from webui.tabs import dataset as dataset_tab
from webui.tabs import settings as settings_tab
from webui.tabs import training_runs as truns

ROOT = Path(__file__).resolve().parent.parent
VOICE = "anna"


def file_url(base: str, path: str | Path, route: str = "gradio_api/file=") -> str:
    return base + route + urllib.parse.quote(str(path))


@pytest.fixture(scope="module")
def secret_home(dataset_home, tiny_model, tmp_path_factory) -> Path:
    """A data folder (its path holds spaces) with everything a real one holds: recordings, a
    dataset, a run with a checkpoint, settings.json, a .env, a generated output with its JSON
    and cached conditioning latents, and an exported zip."""
    home = tmp_path_factory.mktemp("security") / "data folder with spaces"
    shutil.copytree(dataset_home / "voices", home / "voices")
    shutil.copytree(dataset_home / "datasets", home / "datasets")
    run = home / "training" / VOICE / "r1"
    step = run / "checkpoints" / "step-0000001"
    step.mkdir(parents=True)
    (run / "train.yaml").write_text(f"voice: {VOICE}\nrun: r1\nbase_model: {tiny_model}\n")
    for name in (ckpt.MODEL_FILE, ckpt.STATE_FILE, ckpt.COMPLETE_FILE):
        (step / name).write_bytes(b"secret weights")
    (home / "settings.json").write_text('{"base_model": ""}\n')
    (home / ".env").write_text("TOKEN=secret\n")
    outputs = home / "outputs" / VOICE
    (outputs / ".latents").mkdir(parents=True)
    shutil.copy(home / "voices" / VOICE / "reference.wav", outputs / "20260101-000000-1.wav")
    (outputs / "20260101-000000-1.json").write_text('{"text": "hello"}\n')
    (outputs / ".latents" / "abc.pt").write_bytes(b"latents")
    (outputs / "exports").mkdir()
    with zipfile.ZipFile(outputs / "exports" / "anna-r1-step-0000001.zip", "w") as zf:
        zf.writestr("model.pth", b"exported")
    return home


@pytest.fixture(scope="module")
def open_app(secret_home, tiny_model):
    """The app on 127.0.0.1 without a login (the default)."""
    with launch_app(secret_home, tiny_model) as url:
        yield url


def probes(home: Path) -> list[str]:
    """File-route paths that must never be served: the data folder's secrets and the install
    folder, written plainly, with ``..`` (encoded below), relative, as URLs."""
    step = home / "training" / VOICE / "r1" / "checkpoints" / "step-0000001"
    outputs = home / "outputs" / VOICE
    upload = Path(get_upload_folder())
    return [
        str(step / ckpt.STATE_FILE),
        str(step / ckpt.MODEL_FILE),
        str(step),
        str(home / "training" / VOICE / "r1" / "train.yaml"),
        str(home / "voices" / VOICE / "reference.wav"),
        str(home / "datasets" / VOICE / "train.csv"),
        str(home / "datasets" / VOICE / "wavs" / "clip0.wav"),
        str(home / "settings.json"),
        str(home / ".env"),
        str(home),
        str(outputs / "20260101-000000-1.json"),
        str(outputs / ".latents" / "abc.pt"),
        str(outputs / "%2e%2e" / "%2e%2e" / "settings.json"),
        str(outputs / ".." / ".." / "settings.json"),
        str(upload / "%2e%2e" / os.path.relpath(home / "settings.json", upload.parent)),
        str(ROOT / ".git" / "config"),
        str(ROOT / "engine" / "paths.py"),
        str(ROOT / "README.md"),
        "README.md",
        "settings.json",
        "engine/paths.py",
        "/etc/passwd",
        "file://" + str(home / "settings.json"),
        "http://127.0.0.1:1/settings.json",
        "https://example.invalid/x.wav",
    ]


def test_file_routes_serve_only_what_the_page_needs(open_app, secret_home):
    with httpx.Client(base_url=open_app, timeout=30) as client:
        for probe in probes(secret_home):
            for route in ("gradio_api/file=", "gradio_api/file/"):
                quoted = urllib.parse.quote(probe, safe="/%:")  # %2e stays encoded: the server decodes it
                answer = client.get(open_app + route + quoted)
                assert answer.status_code in (403, 404), (route, probe, answer.status_code, answer.text[:200])
                assert b"secret" not in answer.content
        # A URL to this very server, as a second hop, is refused too.
        inner = file_url(open_app, secret_home / "settings.json")
        assert client.get(file_url(open_app, inner)).status_code in (403, 404)

        # What the page itself plays or offers: a generated output and an exported zip (outputs/),
        # and a file uploaded through the page (Gradio's cache).
        output = secret_home / "outputs" / VOICE / "20260101-000000-1.wav"
        answer = client.get(file_url(open_app, output))
        assert answer.status_code == 200 and answer.content == output.read_bytes()
        export = secret_home / "outputs" / VOICE / "exports" / "anna-r1-step-0000001.zip"
        assert client.get(file_url(open_app, export)).content == export.read_bytes()
        uploaded = client.post("gradio_api/upload", files={"files": ("take.wav", b"RIFF-take")})
        assert uploaded.status_code == 200, uploaded.text
        assert client.get(file_url(open_app, uploaded.json()[0])).content == b"RIFF-take"
        config = client.get("config").json()
        assert config["show_error"] is False and config["max_file_size"] == 4 * 1024**3


def test_the_page_plays_a_dataset_clip_from_the_cache_only(secret_home, monkeypatch):
    """The clip editor's audio value is a copy in Gradio's upload folder (served), never the
    dataset's own file (not served)."""
    from webui.tabs import page_file

    monkeypatch.setenv("TIMBRE_HOME", str(secret_home))
    clip = secret_home / "datasets" / VOICE / "wavs" / "clip1.wav"
    copy = Path(page_file(clip))
    assert copy.read_bytes() == clip.read_bytes() and copy.name == "clip1.wav"
    assert serving.may_serve(str(copy)) and not serving.may_serve(str(clip))
    assert page_file(clip) == str(copy), "one copy per content"
    assert page_file(secret_home / "no-such.wav") is None


@pytest.fixture(scope="module")
def locked_app(secret_home, tiny_model):
    """The app with a login (--auth) and a 100 KB upload limit."""
    with launch_app(
        secret_home, tiny_model, ["--auth", "ada:correct horse:battery", "--max-file-size", "100kb"]
    ) as url:
        yield url


def test_routes_need_a_login_with_auth(locked_app, secret_home):
    output = secret_home / "outputs" / VOICE / "20260101-000000-1.wav"
    with httpx.Client(base_url=locked_app, timeout=30) as stranger:
        assert stranger.get("config").status_code == 401
        assert stranger.get("gradio_api/info").status_code == 401
        assert stranger.get(file_url(locked_app, output)).status_code in (401, 403)
        assert stranger.get(file_url(locked_app, secret_home / "settings.json")).status_code in (401, 403)
        assert stranger.post("gradio_api/upload", files={"files": ("a.wav", b"RIFF")}).status_code in (401, 403)
        assert stranger.post("gradio_api/queue/join", json={}).status_code in (401, 403)
        wrong = stranger.post("login", data={"username": "ada", "password": "correct horse"})
        assert wrong.status_code >= 400 and stranger.get("config").status_code == 401
    with httpx.Client(base_url=locked_app, timeout=30) as user:
        assert user.post("login", data={"username": "ada", "password": "correct horse:battery"}).status_code == 200
        config = user.get("config")
        assert config.status_code == 200 and config.json()["max_file_size"] == 100 * 1024
        assert "up to 100 KB each" in config.text, "the Dataset tab states the limit"
        assert user.get(file_url(locked_app, output)).content == output.read_bytes()
        assert user.get(file_url(locked_app, secret_home / "settings.json")).status_code in (403, 404)

        # Uploads over --max-file-size get HTTP 413; one under it is taken.
        too_big = user.post("gradio_api/upload", files={"files": ("big.wav", b"\0" * (100 * 1024 + 1))})
        assert too_big.status_code == 413, too_big.text
        fits = user.post("gradio_api/upload", files={"files": ("small.wav", b"\0" * (90 * 1024))})
        assert fits.status_code == 200 and len(fits.json()) == 1


def run_webui(
    args: list[str], home: Path, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != access.AUTH_ENV}
    environment.update(TIMBRE_HOME=str(home), GRADIO_ANALYTICS_ENABLED="False", **(env or {}))
    argv = [sys.executable, "-m", "webui", "--port", "1", *args]  # port 1: never bound, the check comes first
    return subprocess.run(argv, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "my-laptop.local"])
def test_any_other_address_than_loopback_needs_a_login(host, tmp_path):
    started = time.monotonic()
    result = run_webui(["--host", host], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"refusing to serve on {host} without a password" in result.stderr
    assert "--auth USER:PASSWORD" in result.stderr and access.AUTH_ENV in result.stderr
    assert "Running on" not in result.stdout and time.monotonic() - started < 60


def test_bad_logins_and_sizes_refuse_to_start_without_echoing_the_password(tmp_path):
    result = run_webui(["--host", "0.0.0.0", "--auth", "ada"], tmp_path)
    assert result.returncode == 2 and "--auth: expected USER:PASSWORD" in result.stderr
    empty = tmp_path / "users.txt"
    empty.write_text("ada:hunter2\nbob\n")
    result = run_webui(["--host", "0.0.0.0", "--auth-file", str(empty)], tmp_path)
    assert result.returncode == 2 and "line 2" in result.stderr and "hunter2" not in result.stderr
    result = run_webui(["--max-file-size", "lots"], tmp_path)
    assert result.returncode == 2 and "--max-file-size: not a size: 'lots'" in result.stderr


def test_auth_file(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("# user:password per line\n\nada:correct horse:battery\n  bob:x  \n")
    assert access.resolve_auth("0.0.0.0", None, str(users), env={}) == [
        ("ada", "correct horse:battery"),
        ("bob", "x"),
    ]
    users.write_text("# nobody\n")
    with pytest.raises(access.StartupError, match="holds no user:password line"):
        access.read_auth_file(users)
    with pytest.raises(access.StartupError, match="cannot be read"):
        access.read_auth_file(tmp_path / "missing.txt")


def test_resolve_auth():
    assert access.resolve_auth("127.0.0.1", None, None, env={}) is None
    for host in ("localhost", "127.0.0.2", "::1", "[::1]"):
        assert access.is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "example.org", ""):
        assert not access.is_loopback(host), host
        with pytest.raises(access.StartupError, match="without a password"):
            access.resolve_auth(host, None, None, env={})
    assert access.resolve_auth("0.0.0.0", "ada:pa:ss", None, env={}) == [("ada", "pa:ss")]
    assert access.resolve_auth("0.0.0.0", None, None, env={access.AUTH_ENV: "bob:pw"}) == [("bob", "pw")]
    for bad in ("ada", "ada:", ":pw", ""):
        with pytest.raises(access.StartupError) as caught:
            access.parse_credentials(bad, "--auth")
        assert "pw" not in str(caught.value)


def test_error_messages_carry_no_absolute_paths(timbre_home):
    base_model = "/opt/models/xtts-v2"
    with pytest.raises(Exception) as caught, engine_errors("Starting"):
        raise FileNotFoundError(f"no {paths.run_dir(VOICE, 'r1') / 'train.yaml'} and no {base_model}/model.pth")
    assert caught.value.message == "Starting: no training/anna/r1/train.yaml and no …/model.pth"
    text = f'File "{ROOT / "engine" / "config.py"}", line 3; C:\\Users\\ada\\voice.wav; step 5 / 10 at 1/2 speed'
    assert browser_text(text) == 'File "engine/config.py", line 3; …/voice.wav; step 5 / 10 at 1/2 speed'


# --- nothing typed into a form runs as a command ------------------------------------------------

INJECTIONS = (
    "$(touch {s})",
    "`touch {s}`",
    "; touch {s}",
    "x\ntouch {s}\n",
    "!!python/object/apply:os.system ['touch {s}']",
    "' && touch {s} #",
    "| touch {s}",
)


def test_form_values_never_run(home, tiny_model, tmp_path, monkeypatch):
    sentinel = tmp_path / "SENTINEL"
    monkeypatch.chdir(tmp_path)  # a relative "touch SENTINEL" would land here too
    values = [text.format(s=sentinel) for text in INJECTIONS] + [text.format(s="SENTINEL") for text in INJECTIONS]

    # Names (voice, run, new run from a checkpoint) are refused outright.
    for value in values:
        with pytest.raises(paths.InvalidNameError):
            dataset_tab.create_voice(value)
        with pytest.raises(paths.InvalidNameError):
            truns.start_run({}, VOICE, value)
        with pytest.raises(paths.InvalidNameError):
            truns.branch_and_start(VOICE, "r1", value, "latest", 0.5)

    # Upload names are reduced to safe characters (a name cannot hold "/", so relative ones).
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    source = home / "voices" / VOICE / "reference.wav"
    names = ["$(touch SENTINEL).wav", "`touch SENTINEL`.wav", "; touch SENTINEL.wav", "CON.wav", "nul.WAV"]
    for name in names:
        shutil.copy(source, uploads / name)
    saved, notes = dataset_tab.save_recordings("uploads test", [str(uploads / n) for n in names])
    assert saved == ["touch_SENTINEL.wav", "CON_.wav", "nul_.wav"] and len(notes) == 2  # the same bytes: skipped
    assert all(set(n) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") for n in saved)

    # Settings (base-model folder, Whisper model) are stored as typed and read back as text.
    settings = AppSettings()
    settings_tab.apply_settings(settings, values[0], "faster-whisper", values[4])
    save_settings(settings)
    assert (load_settings().base_model, load_settings().whisper_model) == (values[0].strip(), values[4].strip())

    # The Training form's free-text fields reach train.yaml and the trainer's process.
    form = {"base_model": values[1], "init_weights": values[4], "epochs": 1, "batch_size": 2}
    folder, resumed = truns.start_run(form, VOICE, "injected")
    assert not resumed and process.wait_for_exit(folder, timeout=240) is not None
    written = TrainConfig.load(folder / "train.yaml")
    assert (written.base_model, written.init_weights) == (values[1].strip(), values[4].strip())
    assert yaml.safe_load((folder / "train.yaml").read_text())["init_weights"] == values[4].strip()
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "failed", status  # no such base model: it failed, and did nothing else

    # The Generate tab's text reaches the output's settings JSON (and the tokenizer) as typed;
    # an imported model's name is a folder name, refused like the others.
    spoken = generate_speech(VOICE, values[3], base_model=tiny_model, language="en", log=lambda _: None)
    assert json.loads(spoken.with_suffix(".json").read_text())["text"] == values[3].strip()
    with pytest.raises(paths.InvalidNameError):
        import_model(uploads / "model.zip", values[0])

    assert not sentinel.exists() and not (tmp_path / "SENTINEL").exists(), "a form value ran as a command"
