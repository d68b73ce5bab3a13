"""What each column of a user's series is to a forecaster: a target, a past covariate or a known-future
covariate, plus calendar features generated from the timestamps; and the model's input built from them.

The model's channels are ``[targets | past covariates | known-future covariates | calendar]``
(:mod:`ecalf.models.base`): targets are forecast and scored; past covariates are inputs over the
context only (their future is not known, never forecast, never in the loss); known-future
covariates are inputs over the context and the horizon (``predict(df, future_df=...)`` supplies
their future values); calendar features are known-future covariates computed from the timestamps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ecalf.data.loading import TimeSeriesFrame
from ecalf.errors import ConfigError, DataError

CALENDAR_PREFIX = "calendar:"


@dataclass(frozen=True)
class ColumnRoles:
    """The columns of a fitted forecaster by role (calendar features by their generated names)."""

    targets: list[str]
    past_covariates: list[str] = field(default_factory=list)
    future_covariates: list[str] = field(default_factory=list)
    calendar: list[str] = field(default_factory=list)

    @property
    def user_columns(self) -> list[str]:
        """The data's own columns the forecaster reads, in channel order."""
        return [*self.targets, *self.past_covariates, *self.future_covariates]

    @property
    def channels(self) -> list[str]:
        """Every model channel, in order (calendar features last)."""
        return [*self.user_columns, *self.calendar]

    @property
    def num_known_future(self) -> int:
        """Channels whose horizon values the model is given: known-future covariates and calendar."""
        return len(self.future_covariates) + len(self.calendar)

    @property
    def has_covariates(self) -> bool:
        return bool(self.past_covariates or self.num_known_future)

    def as_dict(self) -> dict[str, list[str]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ColumnRoles:
        names = ("targets", "past_covariates", "future_covariates", "calendar")
        try:
            roles = cls(**{k: [str(c) for c in data.get(k, [])] for k in names})
        except TypeError as exc:
            raise DataError(f"not a description of column roles ({exc})") from None
        if not roles.targets:
            raise DataError("not a description of column roles (no target)")
        return roles


def resolve_roles(
    columns: Sequence[str],
    target: Sequence[str] | None,
    future_covariates: Sequence[str],
    calendar: Sequence[str],
    source: str,
) -> ColumnRoles:
    """The roles of ``columns``: ``target`` (None: every column that is not a known-future covariate)
    is forecast, ``future_covariates`` are known ahead, every other column is a past covariate."""
    available = list(columns)
    for what, names in (("target", target or []), ("future covariate", future_covariates)):
        unknown = [n for n in names if n not in available]
        if unknown:
            raise DataError(
                f"{source}: {what} column {unknown[0]!r} is not in the data (columns: {', '.join(available)})"
            )
    both = [n for n in (target or []) if n in future_covariates]
    if both:
        raise ConfigError(f"column {both[0]!r} is both a target and a covariate; give it one role")
    if len(set(future_covariates)) != len(future_covariates) or len(set(target or [])) != len(target or []):
        raise ConfigError("a column is named twice among the targets or the covariates; name each once")
    if target is None:
        targets = [c for c in available if c not in future_covariates]
        if not targets:
            raise ConfigError(
                f"{source}: every column is a covariate; name the column(s) to forecast with target"
            )
        past: list[str] = []
    else:
        targets = list(target)
        past = [c for c in available if c not in targets and c not in future_covariates]
    return ColumnRoles(targets, past, list(future_covariates), list(calendar))


# --------------------------------------------------------------------------------------------------
# Calendar features
# --------------------------------------------------------------------------------------------------


def calendar_names(frequency: str) -> list[str]:
    """The calendar features for data at ``frequency``: the phase of the day and of the week for
    sub-daily steps, of the week and of the year for daily ones, of the year for coarser ones; each
    as a sine and a cosine (so that 23:00 is next to 00:00)."""
    step = _step(frequency)
    if step is not None and step < pd.Timedelta("1D"):
        cycles = ["day", "week"]
    elif step is not None and step < pd.Timedelta("7D"):
        cycles = ["week", "year"]
    else:
        cycles = ["year"]
    return [f"{CALENDAR_PREFIX}{cycle}_{f}" for cycle in cycles for f in ("sin", "cos")]


def calendar_values(names: Sequence[str], timestamps: pd.DatetimeIndex) -> np.ndarray:
    """(T, len(names)) values of the calendar features ``names`` at ``timestamps``."""
    stamps = pd.DatetimeIndex(timestamps)
    day = (stamps.hour * 3600 + stamps.minute * 60 + stamps.second).to_numpy() / 86400.0
    phases = {
        "day": day,
        "week": (stamps.day_of_week.to_numpy() + day) / 7.0,
        "year": (stamps.day_of_year.to_numpy() - 1 + day) / 365.25,
    }
    columns = []
    for name in names:
        cycle, function = name[len(CALENDAR_PREFIX) :].rsplit("_", 1)
        angle = 2 * np.pi * phases[cycle]
        columns.append(np.sin(angle) if function == "sin" else np.cos(angle))
    return np.stack(columns, axis=1).astype(np.float32) if columns else np.zeros((len(stamps), 0), np.float32)


def _step(frequency: str) -> pd.Timedelta | None:
    try:
        return pd.Timedelta(pd.tseries.frequencies.to_offset(frequency))
    except (ValueError, TypeError):
        return None  # months, quarters, years: not a fixed length


def model_inputs(frame: TimeSeriesFrame, roles: ColumnRoles) -> TimeSeriesFrame:
    """The model's channels of ``frame`` (which holds at least the user columns): the user columns in
    channel order, then the calendar features of its timestamps."""
    selected = frame.select(roles.user_columns)
    if not roles.calendar:
        return selected
    values = np.concatenate([selected.values, calendar_values(roles.calendar, frame.timestamps)], axis=1)
    return TimeSeriesFrame(values, frame.timestamps, roles.channels, frame.source)


def future_inputs(
    roles: ColumnRoles, dates: pd.DatetimeIndex, future: TimeSeriesFrame | None, source: str
) -> np.ndarray:
    """(H, K) values of the known-future channels at the forecast's ``dates``: the user's from
    ``future`` (a frame with those columns at those timestamps, e.g. ``predict(df, future_df=...)``),
    the calendar's computed."""
    parts = []
    if roles.future_covariates:
        if future is None:
            raise DataError(
                f"this forecaster uses known-future covariates {roles.future_covariates}: pass their values "
                f"at the {len(dates)} timestamps after the history ({dates[0]} to {dates[-1]}) as "
                "predict(df, future_df=...) (ecalf forecast --future CSV)"
            )
        missing_columns = [c for c in roles.future_covariates if c not in future.columns]
        if missing_columns:
            raise DataError(
                f"{source}: the future values lack the known-future covariate column(s) {missing_columns}"
            )
        position = pd.Index(future.timestamps).get_indexer(dates)
        if (position < 0).any():
            absent = dates[position < 0]
            raise DataError(
                f"{source}: the future values have no row at {len(absent)} of the {len(dates)} forecast "
                f"timestamps (first missing: {absent[0]}); give one row per timestamp from {dates[0]} to "
                f"{dates[-1]}"
            )
        values = future.select(roles.future_covariates).values[position]
        if np.isnan(values).any():
            raise DataError(f"{source}: the known-future covariates have missing values over the horizon")
        parts.append(values)
    if roles.calendar:
        parts.append(calendar_values(roles.calendar, dates))
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(dates), 0), np.float32)
