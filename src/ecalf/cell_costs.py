"""How long a benchmark cell will take, estimated from the cells of the results file that finished.

Cells differ by a factor of a thousand (the naive forecast: a second; an LLM on a full dataset: an
hour), so a progress bar's "seconds per cell so far" says little. A pending cell is estimated by the
median wall time of finished rows of the same model, dataset and setting (full data costs ten times
few-shot), of the same horizon where there are some; without any, by those of a registered dataset of
the same size (rows, channels and split: ETTh1 and ETTh2, ETTm1 and ETTm2). A cell that will only
evaluate a run another cell trained (a zero-shot target, a run reused from a sibling grid) costs about
nothing. While a grid runs, the
estimates are scaled by how the cells of this run compare with their own estimates (this machine,
this load).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from ecalf.data.specs import find_spec


@dataclass(frozen=True)
class CellKey:
    model: str
    dataset: str
    setting: str
    horizon: int


K = TypeVar("K")


def _medians(values: Mapping[K, list[float]]) -> dict[K, float]:
    return {key: statistics.median(seconds) for key, seconds in values.items()}


def dataset_size(dataset: str) -> tuple[str, int, int] | None:
    """What a registered dataset's cells cost depends on: its split rule, rows and channels (datasets
    that share them train on as many windows of as many tokens). None for a user's CSV."""
    spec = find_spec(dataset)
    if spec is None or spec.num_rows is None or spec.num_channels is None:
        return None
    return spec.split, spec.num_rows, spec.num_channels


@dataclass
class CellCosts:
    """Median wall seconds of finished cells, by (model, dataset, setting, horizon) and without the
    horizon, and the same with the dataset's size (:func:`dataset_size`) in place of its name."""

    by_horizon: dict[tuple[str, str, str, int], float] = field(default_factory=dict)
    by_setting: dict[tuple[str, str, str], float] = field(default_factory=dict)
    by_size_horizon: dict[tuple[str, object, str, int], float] = field(default_factory=dict)
    by_size_setting: dict[tuple[str, object, str], float] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, str]]) -> CellCosts:
        """From results rows (``model``, ``dataset``, ``setting``, ``horizon``, ``wall_seconds``);
        zero-shot rows are left out (their wall time is their source's training, counted once)."""
        cells = []
        for row in rows:
            try:
                seconds = float(row["wall_seconds"])
                horizon = int(row["horizon"])
            except (KeyError, TypeError, ValueError):
                continue
            if row.get("target") or seconds != seconds or seconds < 0:  # zero-shot, NaN
                continue
            cells.append((CellKey(row["model"], row["dataset"], row["setting"], horizon), seconds))
        return cls.from_cells(cells)

    @classmethod
    def from_cells(cls, cells: Iterable[tuple[CellKey, float]]) -> CellCosts:
        """From finished cells that trained and the wall seconds each took."""
        fine: dict[tuple[str, str, str, int], list[float]] = defaultdict(list)
        middle: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        sized: dict[tuple[str, object, str, int], list[float]] = defaultdict(list)
        sized_middle: dict[tuple[str, object, str], list[float]] = defaultdict(list)
        for key, seconds in cells:
            fine[key.model, key.dataset, key.setting, key.horizon].append(seconds)
            middle[key.model, key.dataset, key.setting].append(seconds)
            size = dataset_size(key.dataset)
            if size is not None:
                sized[key.model, size, key.setting, key.horizon].append(seconds)
                sized_middle[key.model, size, key.setting].append(seconds)
        return cls(_medians(fine), _medians(middle), _medians(sized), _medians(sized_middle))

    def estimate(self, key: CellKey, *, by_size: bool = True) -> float | None:
        """Seconds a cell that trains will take, or None when no finished cell of its model and setting,
        on its dataset or (``by_size``) one of the same size, says."""
        size = dataset_size(key.dataset) if by_size else None
        for estimate in (
            self.by_horizon.get((key.model, key.dataset, key.setting, key.horizon)),
            self.by_setting.get((key.model, key.dataset, key.setting)),
            self.by_size_horizon.get((key.model, size, key.setting, key.horizon)) if size else None,
            self.by_size_setting.get((key.model, size, key.setting)) if size else None,
        ):
            if estimate is not None:
                return estimate
        return None


def estimate_from(key: CellKey, *sources: CellCosts) -> float | None:
    """The first source's estimate from the cell's own dataset, else the next's, ...; then the same by
    dataset size."""
    for by_size in (False, True):
        for costs in sources:
            estimate = costs.estimate(key, by_size=by_size)
            if estimate is not None:
                return estimate
    return None


@dataclass
class Remaining:
    """The time left in a running grid: estimates of the pending cells, calibrated by the cells done.

    ``estimates``: per pending cell, its seconds (0 for a cell that reuses a run) or None (unknown).
    """

    estimates: dict[object, float | None]
    keys: dict[object, CellKey] = field(default_factory=dict)
    """The pending cells that train, by what estimates them: a cell that finishes here estimates the
    pending cells of its kind that had no estimate."""
    parallel: int = 1
    """Cells running at once (``--jobs``): the time left is their work shared out, but never less than
    the longest cell."""
    _done_estimated: float = 0.0
    _done_actual: float = 0.0
    _learned: list[tuple[CellKey, float]] = field(default_factory=list)

    def finished(self, cell: object, seconds: float) -> None:
        estimate = self.estimates.pop(cell, None)
        if estimate:  # a known, non-zero estimate calibrates the rest
            self._done_estimated += estimate
            self._done_actual += seconds
        key = self.keys.pop(cell, None)
        if key is None or estimate is not None:
            return
        self._learned.append((key, seconds))
        learned = CellCosts.from_cells(self._learned)
        for other, value in self.estimates.items():
            if value is None and other in self.keys:
                self.estimates[other] = learned.estimate(self.keys[other])

    def dropped(self, cell: object) -> None:
        """A cell that failed: no longer pending in this run, and no measure of the machine."""
        self.estimates.pop(cell, None)

    @property
    def unknown(self) -> int:
        return sum(v is None for v in self.estimates.values())

    def seconds(self) -> float:
        """Estimated wall seconds for the pending cells that have an estimate, scaled by how this run's
        finished cells compared with theirs, shared out over the ``parallel`` cells at a time."""
        scale = self._done_actual / self._done_estimated if self._done_estimated > 0 else 1.0
        known = [v for v in self.estimates.values() if v]
        return scale * max(sum(known) / max(self.parallel, 1), max(known, default=0.0))

    def describe(self) -> str:
        """E.g. ``~3.2 h left (+4 cells not estimated)``; ``time left unknown`` when no pending cell has
        an estimate."""
        if self.estimates and self.unknown == len(self.estimates):
            return "time left unknown (no finished cell of the same model, setting and dataset size yet)"
        text = f"~{format_duration(self.seconds())} left"
        return text + (f" (+{self.unknown} cells not estimated)" if self.unknown else "")


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
