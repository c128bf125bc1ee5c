"""The Generate tab's form as plain functions: the choices it offers (models, checkpoints,
reference clips), form values ⇄ :class:`engine.generate.synthesis.GenerationSettings`, a past output's
settings back into form values, and the calls into the engine with the app's synthesizer.

Nothing here builds components, so the tests call it without a browser.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from pathlib import Path

from engine import paths, runs
from engine.generate import conditioning
from engine.generate import synthesis as generate
from webui.tabs import FormError, TabContext

LATEST = "latest"
BEST = runs.BEST
MAX_CANDIDATES = 4
#: Slider ranges (minimum, maximum, step) of the sampling settings.
RANGES = {
    "temperature": (0.05, 1.5, 0.05),
    "top_k": (1, 100, 1),
    "top_p": (0.05, 1.0, 0.05),
    "repetition_penalty": (1.0, 20.0, 0.5),
    "length_penalty": (0.5, 2.0, 0.1),
    "speed": (0.5, 2.0, 0.05),
    "max_seconds": (0.0, 30.0, 0.5),
    "nfe_step": (4, 64, 1),
    "cfg_strength": (0.0, 5.0, 0.1),
    "sway_sampling_coef": (-1.0, 1.0, 0.1),
}
#: Settings shown in the main row rather than in the Sampling accordion.
FIELDS_SET_ELSEWHERE = ("seed",)
#: Concurrency group of the events that use the app's synthesizer (generate, export): one at a
#: time, since switching weights in the middle of another's generation would mix them.
SYNTHESIZER_QUEUE = {"concurrency_id": "synthesizer", "concurrency_limit": 1}
#: The form fields besides the sampling settings.
FORM_FIELDS = ("voice", "run", "checkpoint", "language", "text", "seed", "references", "candidates", "stream", "rank")


def settings_help() -> dict[str, str]:
    """Help text per GenerationSettings field (:data:`engine.generate.synthesis.GENERATION_HELP`), capitalised."""
    return {name: text[:1].upper() + text[1:] for name, text in generate.GENERATION_HELP.items()}


def settings_fields() -> list[dataclasses.Field]:
    """The sampling settings of the Sampling accordion, in declaration order."""
    return [f for f in dataclasses.fields(generate.GenerationSettings) if f.name not in FIELDS_SET_ELSEWHERE]


# --- choices ---------------------------------------------------------------------------------


def model_choices(voice: str | None) -> list[tuple[str, str]]:
    """(label, value) pairs: the base model, the voice's runs, then the imported models
    (value ``imported:<name>``, label ``<name> (imported)``)."""
    choices = [(generate.BASE_MODEL, generate.BASE_MODEL)]
    choices += [(run, run) for run in (paths.list_runs(voice) if voice else [])]
    choices += [(f"{name} (imported)", generate.IMPORTED_PREFIX + name) for name in generate.list_imported_models()]
    return choices


def run_choices(voice: str | None) -> list[str]:
    """The values of :func:`model_choices`."""
    return [value for _, value in model_choices(voice)]


def default_model(voice: str | None) -> str:
    """The last-named run of the voice, else the base model."""
    runs_of_voice = paths.list_runs(voice) if voice else []
    return runs_of_voice[-1] if runs_of_voice else generate.BASE_MODEL


def _is_run(voice: str | None, run: str | None) -> bool:
    return bool(voice and run) and run != generate.BASE_MODEL and not run.startswith(generate.IMPORTED_PREFIX)


def best_checkpoint(voice: str | None, run: str | None) -> str | None:
    """The ``step-NNNNNNN`` checkpoint evaluation chose as the run's best, if it still exists."""
    if not _is_run(voice, run):
        return None
    run_dir = paths.run_dir(voice, run)
    name = runs.best_checkpoint_name(run_dir)
    return name if name in {c.name for c in runs.list_checkpoints(run_dir) if c.complete} else None


def checkpoint_choices(voice: str | None, run: str | None) -> list[str]:
    """ "latest", "best" when the run's scores chose one, then the run's complete checkpoints,
    newest first (only "latest" otherwise)."""
    if not _is_run(voice, run):
        return [LATEST]
    complete = [c.name for c in runs.list_checkpoints(paths.run_dir(voice, run)) if c.complete]
    return [LATEST, *([BEST] if best_checkpoint(voice, run) else []), *reversed(complete)]


def checkpoint_labels(voice: str | None, run: str | None) -> list[tuple[str, str]]:
    """(label, value) of :func:`checkpoint_choices`: "best" is labelled with the checkpoint it
    stands for (the value stays "best", resolved by the engine when speaking or exporting)."""
    best = best_checkpoint(voice, run)
    labels = {LATEST: "latest", BEST: f"best ({best}, by score)"}
    return [(labels.get(name, name), name) for name in checkpoint_choices(voice, run)]


def reference_choices(voice: str | None) -> list[tuple[str, str]]:
    """(label, id) pairs of the voice's recordings and dataset clips (:mod:`engine.generate.conditioning`)."""
    return [(ref.label, ref.id) for ref in conditioning.list_references(voice)] if voice else []


def references_info(voice: str | None) -> str:
    """The references box's help: what an empty choice means for this voice."""
    if not voice:
        return "Choose a voice first."
    available = conditioning.list_references(voice)
    if not available:
        return "This voice has no recordings or dataset clips yet."
    default = conditioning.default_references(voice)
    kind = "recording" if default[0].kind == conditioning.RECORDING else "dataset clip"
    what = f"the voice's {kind}" if len(default) == 1 else f"all {len(default)} {kind}s of the voice"
    return (
        f"Empty: {what}. Up to 30 s of each is used; the conditioning latents are computed once per "
        "choice of clips and model, then cached."
    )


# --- form values ⇄ settings ------------------------------------------------------------------


def make_settings(form: dict) -> generate.GenerationSettings:
    """GenerationSettings from the form; an empty seed draws one. Raises FormError (a bad seed)
    or GenerationError (a bad setting), both ValueErrors naming the field."""
    hints = typing.get_type_hints(generate.GenerationSettings)
    values = {}
    for f in settings_fields():
        if f.name in form and form[f.name] is not None:
            values[f.name] = hints[f.name](form[f.name]) if hints[f.name] in (int, float, bool) else form[f.name]
    seed = str(form.get("seed") or "").strip()
    if seed and not seed.isdigit():
        raise FormError(f"seed must be a whole number or empty, got {seed!r}")
    return generate.GenerationSettings(**values, seed=int(seed) if seed else None)


def candidate_count(form: dict) -> int:
    """The number of candidates asked for, 1 to :data:`MAX_CANDIDATES`. Raises FormError (a ValueError)."""
    try:
        count = int(form.get("candidates") or 1)
    except (TypeError, ValueError):
        raise FormError(f"candidates must be a whole number, got {form.get('candidates')!r}") from None
    if not 1 <= count <= MAX_CANDIDATES:
        raise FormError(f"candidates must be between 1 and {MAX_CANDIDATES}, got {count}")
    return count


def form_from_output(meta: dict) -> dict:
    """Form values (by field name) that generate a past output again: its text, model,
    resolved checkpoint, language, references, seed and sampling settings; one candidate."""
    settings = generate.settings_of(meta)
    values = {f.name: getattr(settings, f.name) for f in settings_fields()}
    return values | {
        "text": meta.get("text", ""),
        "run": meta.get("run") or generate.BASE_MODEL,
        "checkpoint": meta.get("checkpoint") or LATEST,
        "language": meta.get("language") or "en",
        "references": list(meta.get("references") or []),
        "seed": "" if settings.seed is None else str(settings.seed),
        "candidates": 1,
    }


# --- calls into the engine -------------------------------------------------------------------


def synthesizer(ctx: TabContext) -> generate.Synthesizer:
    """The app's synthesizer for the base model of the Settings tab (made again when that changes)."""
    base_model = ctx.settings.base_model_dir()
    if ctx.synthesizer is None or Path(ctx.synthesizer.base_model) != Path(base_model):
        ctx.synthesizer = generate.make_synthesizer(base_model)  # of the folder's family
    return ctx.synthesizer


def _request(ctx: TabContext, form: dict) -> dict:
    voice = form.get("voice")
    if not voice:
        raise FormError("choose a voice first")
    run = form.get("run") or generate.BASE_MODEL
    return dict(
        voice=voice, text=form.get("text") or "", run=None if run == generate.BASE_MODEL else run,
        checkpoint=form.get("checkpoint") or LATEST, base_model=ctx.settings.base_model_dir(),
        settings=make_settings(form), language=form.get("language") or "en",
        references=list(form.get("references") or []) or None, synthesizer=synthesizer(ctx),
    )  # fmt: skip


def speak(ctx: TabContext, form: dict, log=print) -> Path:
    """Generate one output from the form's values; returns the WAV path."""
    return speak_candidates(ctx, {**form, "candidates": 1}, log=log)[0]


def speak_candidates(ctx: TabContext, form: dict, log=print, progress=None, numbering=None) -> list[Path]:
    """Generate the form's number of candidates (seeds seed, seed+1, …); returns the WAV paths.
    ``numbering``: see :func:`engine.generate.synthesis.generate_candidates`."""
    return generate.generate_candidates(**_request(ctx, form), candidates=candidate_count(form), log=log,
                                        progress=progress, numbering=numbering)  # fmt: skip


def scorer(ctx: TabContext, voice: str, language: str, log=print):
    """The app's :class:`engine.speech.scoring.Scorer` for ``voice`` and ``language`` (made again when
    either changes): Whisper and the voice's reference embedding load once."""
    from engine.speech.scoring import Scorer

    current = ctx.scorer
    if current is None or (current.voice, current.language) != (voice, language):
        ctx.scorer = None  # the old one's Whisper model goes before the new one loads
        ctx.scorer = Scorer(voice, language, log=log)
    return ctx.scorer


def rank_outputs(ctx: TabContext, form: dict, wavs: list[Path], log=print) -> list[dict]:
    """Score the candidates ``wavs`` against the form's text and voice and order them best first
    (:func:`engine.speech.scoring.rank_candidates`: intelligible first, then by SECS). Raises
    FileNotFoundError (the voice has no dataset) and TranscriptionError (an English-only Whisper
    model for another language)."""
    from engine.speech.scoring import rank_candidates

    return rank_candidates(scorer(ctx, form["voice"], form.get("language") or "en", log), wavs, form.get("text") or "")


def speak_streaming(ctx: TabContext, form: dict, log=print, candidates: int = 1) -> Iterator:
    """:func:`engine.generate.synthesis.stream_speech` for the form's values (the first of ``candidates``):
    yields chunks, returns the WAV path."""
    return generate.stream_speech(**_request(ctx, form), log=log, candidates=candidates)
