"""engine.metrics: metrics.jsonl rows → plot series, read incrementally; resume replaces steps."""

from __future__ import annotations

import json

import pytest

from engine import metrics
from engine.metrics import RunSeries


def train(step, mel=5.0, **extra):
    row = {"step": step, "epoch": step / 4, "split": "train", "loss_text_ce": 3.0, "loss_mel_ce": mel,
           "lr": 1e-5, "grad_norm": 0.5, "samples": [0, 1]}  # fmt: skip
    return {**row, **extra}


def validation(step, loss):
    return {"step": step, "epoch": step / 4, "split": "validation", "loss_text_ce": 3.1, "loss_mel_ce": loss,
            "loss": loss + 0.031}  # fmt: skip


def write(path, rows, mode="a"):
    with path.open(mode) as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))


def test_series_from_rows_and_events():
    series = RunSeries()
    series.add_rows(
        [train(1), train(2, mel=4.0), {"event": "checkpoint", "step": 2, "epoch": 0.5}, validation(2, 4.5),
         {"event": "spike", "step": 3, "epoch": 0.75, "loss": 30.0, "last_good_step": 2}, train(3, mel=30.0),
         {"event": "skipped_step", "step": 4, "epoch": 1.0}, train(4, mel=None, grad_norm=None, skipped=True),
         {"event": "unknown", "step": 5}, {"no": "step"}, {"step": True, "split": "train"}]
    )  # fmt: skip
    assert series.train["mel_ce"].step == [1, 2, 3]  # the skipped step has no loss value
    assert series.train["lr"].step == [1, 2, 3, 4] and series.train["grad_norm"].value == [0.5, 0.5, 0.5]
    assert series.train["mel_ce"].x("epoch") == [0.25, 0.5, 0.75]
    assert series.validation["mel_ce"].value == [4.5] and series.best_validation() == (2, pytest.approx(4.531))
    assert [e.kind for e in series.events] == ["checkpoint", "spike", "skipped_step"]
    assert series.last_spike().last_good_step == 2 and series.last_spike().value == 30.0
    assert (series.last_step, series.last_epoch, series.point_count()) == (4, 1.0, 4)
    with pytest.raises(ValueError):
        series.train["lr"].x("time")


def test_update_reads_only_new_complete_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    series = RunSeries()
    assert series.update(tmp_path) is False  # no file yet
    write(path, [train(1), train(2)])
    path.open("a").write('{"step": 3, "spl')  # half-written
    assert series.update(tmp_path) is True and series.train["mel_ce"].step == [1, 2]
    assert series.update(tmp_path) is False
    path.write_text(path.read_text() + 'it": "train", "loss_mel_ce": 1.0}\n')
    assert series.update(tmp_path) is True and series.train["mel_ce"].step == [1, 2, 3]
    assert metrics.load_series(tmp_path).train["mel_ce"].value == [5.0, 5.0, 1.0]
    path.write_text(json.dumps(train(1, mel=9.0)) + "\n")  # the run was deleted and started again
    assert series.update(tmp_path) is True and series.train["mel_ce"].value == [9.0]


def test_resume_replaces_repeated_steps():
    """A crash at step 5 after a checkpoint at step 3: the resumed run logs steps 4 and 5 again."""
    series = RunSeries()
    series.add_rows([train(s) for s in (1, 2, 3)] + [{"event": "checkpoint", "step": 3, "epoch": 0.75}])
    series.add_rows([validation(3, 4.0), {"event": "spike", "step": 4, "epoch": 1.0, "loss": 9.0}, train(4)])
    series.add_rows([train(5, mel=7.0)])
    # resumed from step 3: the spike repeats (same data, same seed), then step 4 again
    series.add_rows([{"event": "spike", "step": 4, "epoch": 1.0, "loss": 9.5}, train(4, mel=2.0), train(5, mel=1.0)])
    assert series.train["mel_ce"].step == [1, 2, 3, 4, 5] and series.train["mel_ce"].value[3:] == [2.0, 1.0]
    assert series.validation["mel_ce"].step == [3]
    assert [(e.kind, e.step, e.value) for e in series.events] == [("checkpoint", 3, None), ("spike", 4, 9.5)]


def test_thin_and_smooth():
    assert metrics.thin(5, 10) == [0, 1, 2, 3, 4]
    kept = metrics.thin(10_001, 100)
    assert len(kept) <= 101 and kept[0] == 0 and kept[-1] == 10_000
    with pytest.raises(ValueError):
        metrics.thin(10, 1)
    assert metrics.smooth([1.0, 2.0, 3.0], 0) == [1.0, 2.0, 3.0]
    smoothed = metrics.smooth([4.0, 4.0, 4.0, 0.0], 0.9)
    assert smoothed[:3] == pytest.approx([4.0, 4.0, 4.0]) and 2.5 < smoothed[3] < 4.0  # bias-corrected
    with pytest.raises(ValueError):
        metrics.smooth([1.0], 1.0)
