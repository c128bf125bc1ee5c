"""Plot series from a run's ``metrics.jsonl``: loss curves, learning rate, gradient norm, events.

The trainer (rank 0) appends one JSON object per line (docs/run-folder.md); this module turns
those rows into per-quantity point lists that a plot draws, incrementally: :meth:`RunSeries.update`
reads only the bytes appended since the last call (:func:`engine.runs.read_metrics`), so a UI
can poll it every second on a run with 100 000 steps.

Rows read (anything else is ignored):

- train rows (``split == "train"``): ``step``, ``epoch`` (a float: 2.5 is half-way through the
  third epoch), the family's loss terms (XTTS-v2: ``loss_text_ce``, ``loss_mel_ce``, unweighted
  cross-entropies in nats per token; F5-TTS: ``loss_flow``, the flow-matching MSE), ``lr``,
  ``grad_norm`` (L2 norm before clipping), ``samples_per_second``; one row per applied update (a
  skipped one has a ``skipped_step`` event instead; older runs wrote a row leaving out its
  non-finite values);
- validation rows (``split == "validation"``): ``step``, ``epoch``, the loss terms and ``loss``
  (the optimised loss, by which the trainer keeps its best checkpoint);
- event rows (``event``): ``checkpoint`` (a checkpoint saved after ``step``), ``spike`` (a
  training loss over 3x its moving average, with ``last_good_step``), ``skipped_step`` (an
  update not applied, after ``step`` applied ones), ``oom_retry`` / ``oom_split`` (CUDA out of memory recovered).

A resumed run repeats the steps after its newest checkpoint; when a train row's step is not
beyond the last one seen, the points (and events) from that step on are dropped and replaced,
so the curves show the history the current weights come from.
"""

from __future__ import annotations

import bisect
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine import runs

#: Train-row quantities: series name → metrics key.
TRAIN_KEYS = {"text_ce": "loss_text_ce", "mel_ce": "loss_mel_ce", "flow": "loss_flow", "lr": "lr",
              "grad_norm": "grad_norm", "speed": "samples_per_second"}  # fmt: skip
#: Validation-row quantities: series name → metrics key.
VALIDATION_KEYS = {"text_ce": "loss_text_ce", "mel_ce": "loss_mel_ce", "flow": "loss_flow", "loss": "loss"}
#: Event kinds kept for the plot markers.
EVENTS = ("checkpoint", "spike", "skipped_step", "oom_retry", "oom_split")
#: The x axes a plot may use.
AXES = ("step", "epoch")


def _number(value) -> float | None:
    """A finite float from a JSON value, else None (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class Points:
    """One curve: parallel lists of optimizer step, epoch position and value, in step order."""

    step: list[int] = field(default_factory=list)
    epoch: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.step)

    def add(self, step: int, epoch: float, value: float) -> None:
        """Append a point; a step not beyond the last one first drops the points from it on."""
        if self.step and step <= self.step[-1]:
            self.cut(step)
        self.step.append(step)
        self.epoch.append(epoch)
        self.value.append(value)

    def cut(self, step: int) -> None:
        """Drop the points at ``step`` and after."""
        keep = bisect.bisect_left(self.step, step)
        del self.step[keep:], self.epoch[keep:], self.value[keep:]

    def x(self, axis: str) -> list[float]:
        """The x values for ``axis`` ("step" or "epoch")."""
        if axis not in AXES:
            raise ValueError(f"axis must be one of {', '.join(AXES)}, got {axis!r}")
        return self.step if axis == "step" else self.epoch


@dataclass
class Event:
    """A marker on the plot: ``kind`` (one of :data:`EVENTS`) after optimizer step ``step``.

    ``value`` is the loss of a spike (None for other kinds); ``last_good_step`` the newest
    complete checkpoint before a spike (None when there was none yet).
    """

    kind: str
    step: int
    epoch: float
    value: float | None = None
    last_good_step: int | None = None


@dataclass
class RunSeries:
    """All plot data of one run, grown by :meth:`update` from the bytes appended to metrics.jsonl.

    ``train`` and ``validation`` map a quantity (:data:`TRAIN_KEYS`, :data:`VALIDATION_KEYS`)
    to its :class:`Points`; ``events`` lists :class:`Event` in file order; ``offset`` is the
    byte offset read so far.
    """

    offset: int = 0
    train: dict[str, Points] = field(default_factory=lambda: {k: Points() for k in TRAIN_KEYS})
    validation: dict[str, Points] = field(default_factory=lambda: {k: Points() for k in VALIDATION_KEYS})
    events: list[Event] = field(default_factory=list)
    last_step: int = 0
    last_epoch: float = 0.0
    _settled_events: int = 0  # events up to here came before the last train row

    def update(self, run_dir: str | os.PathLike) -> bool:
        """Read the rows appended to ``run_dir``'s metrics.jsonl since the last call; returns
        whether any row was added. A file that shrank (the run was deleted and started again)
        is read again from the start."""
        rows, offset = runs.read_metrics(Path(run_dir), self.offset)
        if offset < self.offset:  # read from the start again: forget what was read before
            fresh = RunSeries()
            self.__dict__.update(fresh.__dict__)
        self.offset = offset
        self.add_rows(rows)
        return bool(rows)

    def add_rows(self, rows: list[dict]) -> None:
        """Add metrics rows (dicts as written by the trainer), in file order."""
        for row in rows:
            step = row.get("step")
            if isinstance(step, bool) or not isinstance(step, int):
                continue
            epoch = _number(row.get("epoch"))
            epoch = float(step) if epoch is None else epoch
            if "event" in row:
                if row["event"] in EVENTS:
                    last_good = row.get("last_good_step")
                    self.events.append(
                        Event(
                            row["event"],
                            step,
                            epoch,
                            _number(row.get("loss")),
                            last_good if isinstance(last_good, int) and not isinstance(last_good, bool) else None,
                        )
                    )
            elif row.get("split") == "train":
                self._add_train(row, step, epoch)
            elif row.get("split") == "validation":
                for name, key in VALIDATION_KEYS.items():
                    value = _number(row.get(key))
                    if value is not None:
                        self.validation[name].add(step, epoch, value)

    def _add_train(self, row: dict, step: int, epoch: float) -> None:
        if self.last_step and step <= self.last_step:  # a resume repeats steps: replace them
            for points in (*self.train.values(), *self.validation.values()):
                points.cut(step)
            settled = [e for e in self.events[: self._settled_events] if e.step < step]
            self.events = settled + self.events[self._settled_events :]
        for name, key in TRAIN_KEYS.items():
            value = _number(row.get(key))
            if value is not None:
                self.train[name].add(step, epoch, value)
        self.last_step, self.last_epoch = step, epoch
        self._settled_events = len(self.events)

    # ---- what the plots and the status line ask --------------------------------------------------

    def events_of(self, kind: str) -> list[Event]:
        """The events of one kind, in file order."""
        return [e for e in self.events if e.kind == kind]

    def best_validation(self) -> tuple[int, float] | None:
        """(step, loss) of the lowest validation loss, the checkpoint the trainer keeps as best;
        None without validation rows."""
        points = self.validation["loss"]
        if not points:
            return None
        index = min(range(len(points)), key=lambda i: points.value[i])
        return points.step[index], points.value[index]

    def last_spike(self) -> Event | None:
        """The newest spike event, or None."""
        spikes = self.events_of("spike")
        return spikes[-1] if spikes else None

    def point_count(self) -> int:
        """Train points (the main loss: mel CE, or the flow loss of an F5-TTS run) plus validation
        points (loss): a quick size for tests and the UI."""
        return len(self.train[self.main_loss()]) + len(self.validation["loss"])

    def main_loss(self) -> str:
        """The series of the loss that makes the voice: ``flow`` for a run that logs the
        flow-matching loss (F5-TTS), else ``mel_ce`` (XTTS-v2)."""
        return "flow" if len(self.train["flow"]) or len(self.validation["flow"]) else "mel_ce"


def thin(count: int, max_points: int) -> list[int]:
    """Indices of at most ``max_points`` (≥ 2) evenly strided points out of ``count``, always
    keeping the last, so a plot of a long run stays light and still ends at the newest point."""
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    if count <= max_points:
        return list(range(count))
    stride = math.ceil(count / (max_points - 1))
    indices = list(range(0, count, stride))
    if indices[-1] != count - 1:
        indices.append(count - 1)
    return indices


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard's smoothing), so the
    first points are not pulled toward zero. ``weight`` in [0, 1): 0 returns the values."""
    if not 0 <= weight < 1:
        raise ValueError(f"weight must be in [0, 1), got {weight}")
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def load_series(run_dir: str | os.PathLike) -> RunSeries:
    """A :class:`RunSeries` with everything metrics.jsonl holds now (empty if it is missing)."""
    series = RunSeries()
    series.update(run_dir)
    return series
