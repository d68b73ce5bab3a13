"""Result tables and plots from a benchmark results CSV (``ecalf report RESULTS.csv``).

- Per horizon: mean ± std over seeds of each (setting, dataset, target, model, horizon).
- Per dataset: for each seed the mean over the horizons present, then mean ± std over seeds; a
  dataset mean is only shown when the model has every horizon of that dataset that any model has,
  so a partly finished grid never averages different horizon sets.
- Plots: per-dataset bars of MSE by model, and MSE per horizon of chosen models (CALF vs Enhanced CALF).
- Published numbers (``--published [FILE]``, :mod:`ecalf.published`): italic rows
  and columns beside the measured ones where their setting and dataset match, with their sources under
  the tables, and dashed lines in both plots; they are never marked best.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ecalf.artifacts import write_text
from ecalf.benchmark import read_results
from ecalf.benchmark.results import INTERVAL_COLUMN
from ecalf.ensembles import SUFFIX
from ecalf.errors import EcalfError
from ecalf.published import BUILTIN, MEAN_HORIZONS, load_published

GROUP = ["setting", "dataset", "target", "model"]
MODEL_ORDER = ("naive", "mean", "linear", "dlinear", "patchtst", "itransformer", "calf", "ecalf")
"""The order of models in tables and plots: the simplest baselines first, the LLM models last."""


def load_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    rows = read_results(path)
    if not rows:
        raise EcalfError(f"{path} holds no results (or does not exist); run `ecalf benchmark GRID` first")
    df = pd.DataFrame(rows)
    for column in ("mse", "mae", "naive_mse", "naive_mae", "wall_seconds", *interval_columns(df)):
        df[column] = pd.to_numeric(df[column], errors="coerce")
    df["horizon"] = df["horizon"].astype(int)
    df["seed"] = df["seed"].astype(int)
    df["target"] = df["target"].fillna("")
    return df


def interval_columns(df: pd.DataFrame) -> list[str]:
    """The interval-score columns of a results frame (``coverage_80``, ``aci_width_95``, ...)."""
    return [str(c) for c in df.columns if INTERVAL_COLUMN.match(str(c))]


def interval_levels(df: pd.DataFrame) -> list[str]:
    """The levels a results frame has interval scores of, as their columns spell them, ascending."""
    return sorted({c.rsplit("_", 1)[1] for c in interval_columns(df)}, key=float)


def interval_table(df: pd.DataFrame) -> str:
    """Coverage and mean width of each level's intervals per cell (split conformal, and adaptive
    where scored), with how far coverage falls short of or exceeds its level; "" without intervals."""
    levels = interval_levels(df)
    if not levels:
        return ""
    scored = df.dropna(subset=[f"coverage_{levels[0]}"])
    adaptive = any(c.startswith("aci_") for c in interval_columns(df))
    methods = [("", "split")] + ([("aci_", "adaptive")] if adaptive else [])
    header = ["setting", "dataset", "model", "H", "seed"]
    header += [f"{what} {level} %: coverage (width)" for _, what in methods for level in levels]
    lines = ["## Prediction intervals", "",
             "Coverage of the test points (the level's target in the header) and, in brackets, the mean "
             "width, standardised scale; split conformal calibrated on the validation split, adaptive "
             "conformal inference (`aci_*`) moving the level window by window.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    order = {m: i for i, m in enumerate(model_order(scored))}
    rows = scored.sort_values(
        ["setting", "dataset", "model", "horizon", "seed"],
        key=lambda s: s.map(order) if s.name == "model" else s,
    )
    gaps: dict[str, list[float]] = {what: [] for _, what in methods}
    for _, row in rows.iterrows():
        cells = [
            row["setting"],
            _data_label(row["dataset"], row["target"]),
            row["model"],
            str(row["horizon"]),
            str(row["seed"]),
        ]
        for prefix, what in methods:
            for level in levels:
                coverage, width = row[f"{prefix}coverage_{level}"], row[f"{prefix}width_{level}"]
                cells.append(f"{100 * coverage:.1f} ({width:.3f})")
                gaps[what].append(100 * coverage - float(level))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for what, values in gaps.items():
        lines.append(
            f"- {what}: coverage minus level from {min(values):+.1f} to {max(values):+.1f} points "
            f"(mean absolute {np.mean(np.abs(values)):.1f}) over {len(values)} cell-levels."
        )
    return "\n".join(lines) + "\n"


def model_order(df: pd.DataFrame) -> list[str]:
    """The results' model labels in table order: by the registered model each label runs
    (:data:`MODEL_ORDER`; others after them), labels of one model in the order they first appear
    (``calf`` before its ablation ``calf-random`` when the grid lists it first), so that a table does not
    depend on which cell happened to finish first."""
    labels = list(dict.fromkeys(df["model"]))
    runs = df.groupby("model", sort=False)["model_name"].first() if "model_name" in df else pd.Series()

    def rank(label: str) -> int:
        name = runs.get(label, label)
        return MODEL_ORDER.index(name) if name in MODEL_ORDER else len(MODEL_ORDER)

    return sorted(labels, key=rank)


def per_horizon(df: pd.DataFrame) -> pd.DataFrame:
    """mean, std and seed count of MSE/MAE per (setting, dataset, target, model, horizon)."""
    grouped = df.groupby([*GROUP, "horizon"], sort=False)
    out = grouped.agg(
        mse=("mse", "mean"),
        mse_std=("mse", "std"),
        mae=("mae", "mean"),
        mae_std=("mae", "std"),
        seeds=("seed", "nunique"),
    )
    return out.reset_index()


def per_dataset(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over horizons per seed, then mean ± std over seeds; incomplete horizon sets are dropped."""
    expected = df.groupby(["setting", "dataset", "target"])["horizon"].agg(lambda h: frozenset(h))
    per_seed = (
        df.groupby([*GROUP, "seed"], sort=False)
        .agg(mse=("mse", "mean"), mae=("mae", "mean"), horizons=("horizon", lambda h: frozenset(h)))
        .reset_index()
    )
    keys = list(zip(per_seed["setting"], per_seed["dataset"], per_seed["target"], strict=True))
    complete = [h == expected[k] for h, k in zip(per_seed["horizons"], keys, strict=True)]
    per_seed = per_seed[complete]
    out = per_seed.groupby(GROUP, sort=False).agg(
        mse=("mse", "mean"), mse_std=("mse", "std"), mae=("mae", "mean"), mae_std=("mae", "std"),
        seeds=("seed", "nunique"),
    )  # fmt: skip
    return out.reset_index()


def _cell(mean: float, std: float, seeds: int, best: bool) -> str:
    text = f"{mean:.3f}" + (f" ± {std:.3f}" if seeds > 1 and np.isfinite(std) else "")
    return f"**{text}**" if best else text


def _data_label(dataset: str, target: str) -> str:
    return f"{dataset}→{target}" if target else dataset


def _published_cell(rows: pd.DataFrame) -> str:
    return "—" if rows.empty else f"*{rows.iloc[0].mse:.3f} / {rows.iloc[0].mae:.3f}*"


def _note_sources(shown: dict[str, list[str]], name: str, found: list[pd.DataFrame]) -> None:
    sources = shown.setdefault(name, [])
    for rows in found:
        sources.extend(s for s in rows["source"] if s not in sources)


def _matching(frame: pd.DataFrame, dataset: str, target: str, horizon: int) -> pd.DataFrame:
    return frame[(frame["dataset"] == dataset) & (frame["target"] == target) & (frame["horizon"] == horizon)]


def _quoted_by_model(quoted: pd.DataFrame, keys: list[tuple[str, str, int]]) -> dict[str, list[pd.DataFrame]]:
    """Per published model with a number for any of ``keys`` (dataset, target, horizon; -1 for a
    mean), its rows key by key (empty where it has none)."""
    out: dict[str, list[pd.DataFrame]] = {}
    for name, rows in quoted.groupby("model", sort=False):
        found = [_matching(rows, d, t, h) for d, t, h in keys]
        if any(not f.empty for f in found):
            out[str(name)] = found
    return out


def _covers_published_means(df: pd.DataFrame, setting: str, dataset: str, target: str) -> bool:
    """Whether the results' mean for this (setting, dataset, target) is over the horizons a published
    mean is over (the protocol's four), so that the two can stand side by side."""
    here = df[(df["setting"] == setting) & (df["dataset"] == dataset) & (df["target"] == target)]
    return tuple(sorted(set(here["horizon"]))) == MEAN_HORIZONS


def _mean_over(df: pd.DataFrame, columns: list[tuple[str, str]]) -> str:
    """What a dataset column's mean is over: the horizons every column shares, or each column's own
    (a grid of dataset-horizon pairs has one horizon per dataset)."""
    own = {c: sorted(set(df[(df["dataset"] == c[0]) & (df["target"] == c[1])]["horizon"])) for c in columns}
    if len({tuple(hs) for hs in own.values()}) == 1:
        return f"Mean over horizons {', '.join(map(str, next(iter(own.values()))))}"
    each = "; ".join(f"{_data_label(*c)} {', '.join(map(str, hs))}" for c, hs in own.items())
    return f"Mean over each dataset's horizons ({each})"


def markdown_tables(df: pd.DataFrame, published: pd.DataFrame | None = None) -> str:
    """The report: per setting, a dataset-mean table and a per-horizon table (best MSE in bold), with
    the ``published`` rows (:func:`ecalf.published.load_published`) of the same setting in italics."""
    horizon = per_horizon(df)
    dataset = per_dataset(df)
    lines: list[str] = []
    every_model = model_order(df)
    for setting in dict.fromkeys(df["setting"]):
        present = set(df[df["setting"] == setting]["model"])
        models = [m for m in every_model if m in present]  # a model with no row here has no column
        lines.append(f"## {setting}\n")
        quoted = published[published["setting"] == setting] if published is not None else None
        shown: dict[str, list[str]] = {}  # published model -> its sources, for the rows that appear
        sub = dataset[dataset["setting"] == setting]
        columns = list(dict.fromkeys(zip(sub["dataset"], sub["target"], strict=True)))
        if columns:
            over = _mean_over(df[df["setting"] == setting], columns)
            lines.append(f"{over} (MSE / MAE; ± std over seeds; seeds in brackets).\n")
            lines.append("| model | " + " | ".join(_data_label(d, t) for d, t in columns) + " |")
            lines.append("|---" * (len(columns) + 1) + "|")
            best = {c: sub[(sub["dataset"] == c[0]) & (sub["target"] == c[1])]["mse"].min() for c in columns}
            for model in models:
                cells = []
                for c in columns:
                    r = sub[(sub["model"] == model) & (sub["dataset"] == c[0]) & (sub["target"] == c[1])]
                    if r.empty:
                        cells.append("—")
                        continue
                    row = r.iloc[0]
                    mse = _cell(row.mse, row.mse_std, row.seeds, row.mse == best[c])
                    cells.append(f"{mse} / {_cell(row.mae, row.mae_std, row.seeds, False)} ({row.seeds})")
                lines.append(f"| {model} | " + " | ".join(cells) + " |")
            if quoted is not None:  # horizon 0 matches nothing: a column not over the four horizons
                mean_keys = [
                    (d, t, -1 if _covers_published_means(df, setting, d, t) else 0) for d, t in columns
                ]
                for name, found in _quoted_by_model(quoted[quoted["horizon"] < 0], mean_keys).items():
                    _note_sources(shown, name, found)
                    lines.append(f"| *{name}* | " + " | ".join(map(_published_cell, found)) + " |")
            lines.append("")
        sub_h = horizon[horizon["setting"] == setting]
        lines.append("Per horizon (MSE / MAE; ± std over seeds).\n")
        keys = list(dict.fromkeys(zip(sub_h["dataset"], sub_h["target"], sub_h["horizon"], strict=True)))
        quoted_h = _quoted_by_model(quoted[quoted["horizon"] > 0], keys) if quoted is not None else {}
        for name, found in quoted_h.items():
            _note_sources(shown, name, found)
        headers = [*models, *(f"*{name}*" for name in quoted_h)]
        lines.append("| dataset | H | " + " | ".join(headers) + " |")
        lines.append("|---|---" + "|---" * len(headers) + "|")
        for i, (d, t, h) in enumerate(keys):
            rows = sub_h[(sub_h["dataset"] == d) & (sub_h["target"] == t) & (sub_h["horizon"] == h)]
            best_mse = rows["mse"].min()
            cells = []
            for model in models:
                r = rows[rows["model"] == model]
                if r.empty:
                    cells.append("—")
                    continue
                row = r.iloc[0]
                cells.append(
                    f"{_cell(row.mse, row.mse_std, row.seeds, row.mse == best_mse)} / "
                    f"{_cell(row.mae, row.mae_std, row.seeds, False)}"
                )
            cells += [_published_cell(found[i]) for found in quoted_h.values()]
            lines.append(f"| {_data_label(d, t)} | {h} | " + " | ".join(cells) + " |")
        lines.append("")
        if shown:
            lines.append("In italics: published numbers, not run here.\n")
            lines.extend(f"- *{name}*: {'; '.join(sources)}" for name, sources in shown.items())
            lines.append("")
    return "\n".join(lines)


def sign_test_p(wins: int, cells: int) -> float:
    """Two-sided exact sign test: the chance of a split at least as uneven as ``wins`` of ``cells``
    if either model were as likely to win each cell."""
    tail = min(wins, cells - wins)
    return min(1.0, 2 * sum(math.comb(cells, i) for i in range(tail + 1)) / 2**cells)


SEED_FREE = ("closed_form", "untrainable")
"""How rows of models that do not depend on the seed ended (``stopped``): fitted in closed form, or
with nothing to train."""


def seed_free(df: pd.DataFrame, model: str) -> bool:
    """Whether ``model``'s rows do not depend on the seed (all fitted in closed form or untrainable)."""
    rows = df[df["model"] == model]
    return bool(len(rows)) and "stopped" in rows and bool(rows["stopped"].isin(SEED_FREE).all())


def paired_comparison(df: pd.DataFrame, base: str, other: str) -> pd.DataFrame:
    """``other`` against ``base`` on the cells both ran (same setting, dataset, target, horizon and
    seed; a :func:`seed_free` model's one row per cell pairs with every seed of the other): per
    (setting, dataset, target) the number of paired cells, how many ``other`` has the lower MSE in,
    and the mean and median relative MSE change ``(other - base) / base``."""
    keys = ["setting", "dataset", "target", "horizon", "seed"]
    if seed_free(df, base) or seed_free(df, other):
        keys.remove("seed")  # one fit per cell: it stands beside each seed of the other model
    pairs = df[df["model"] == base][[*keys, "mse"]].merge(
        df[df["model"] == other][[*keys, "mse"]], on=keys, suffixes=("_base", "_other")
    )
    pairs = pairs.assign(
        better=pairs["mse_other"] < pairs["mse_base"],
        tied=pairs["mse_other"] == pairs["mse_base"],
        change=(pairs["mse_other"] - pairs["mse_base"]) / pairs["mse_base"],
    )
    out = pairs.groupby(["setting", "dataset", "target"], sort=False).agg(
        cells=("change", "size"), better=("better", "sum"), tied=("tied", "sum"),
        mean_change=("change", "mean"), median_change=("change", "median"),
    )  # fmt: skip
    out["sign_test_p"] = [  # ties say nothing either way: the test counts the others
        sign_test_p(int(b), int(n - t))
        for b, n, t in zip(out["better"], out["cells"], out["tied"], strict=True)
    ]
    return out.reset_index()


def _seed_note(df: pd.DataFrame, base: str, other: str) -> str:
    fixed = [m for m in (base, other) if seed_free(df, m)]
    return f"; {fixed[0]} does not depend on the seed: its one fit per cell meets every seed" if fixed else ""


def paired_comparison_lines(df: pd.DataFrame, base: str, other: str) -> list[str]:
    """The markdown of :func:`paired_comparison` (nothing when the two models share no cell)."""
    table = paired_comparison(df, base, other)
    if table.empty:
        return []
    cells, better, tied = (int(table[column].sum()) for column in ("cells", "better", "tied"))
    lines = [
        f"## {other} against {base}\n",
        f"Paired cells (same setting, dataset, horizon and seed{_seed_note(df, base, other)}): {other} "
        f"has the lower test MSE in "
        f"{better} of {cells}{f' ({tied} tied)' if tied else ''} (two-sided sign test p = "
        f"{sign_test_p(better, cells - tied):.2g}). Change of MSE "
        f"is ({other} − {base}) / {base}; negative favours {other}.\n",
        f"| setting | dataset | cells | {other} lower | sign test p | mean change | median change |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        lines.append(
            f"| {row.setting} | {_data_label(row.dataset, row.target)} | {row.cells} | {row.better} | "
            f"{row.sign_test_p:.2g} | {row.mean_change:+.1%} | {row.median_change:+.1%} |"
        )
    return [*lines, ""]


def standing(df: pd.DataFrame, model: str) -> pd.DataFrame:
    """Where ``model`` stands among every other model of ``df`` (their ensemble rows included; its own
    ensemble, or the model of which it is the ensemble, left out: the same method), per (setting,
    dataset, target): its mean MSE over the horizons (:func:`per_dataset`), its rank (1 = lowest), the
    models whose mean is lower, and the horizons at which its mean over seeds is the lowest of all."""
    means = per_dataset(df)
    by_horizon = per_horizon(df)
    rows = []
    for key, group in means.groupby(["setting", "dataset", "target"], sort=False):
        own = group[group["model"] == model]
        if own.empty:
            continue
        mse = float(own["mse"].iloc[0])
        base = model.removesuffix(SUFFIX)
        same = {model, base, base + SUFFIX}  # itself, and its ensemble or the model it ensembles
        group = group[~group["model"].isin(same - {model})]
        lower = group[group["model"] != model].sort_values("mse")
        lower = lower[lower["mse"] < mse]
        horizons = by_horizon[
            (by_horizon["setting"] == key[0])
            & (by_horizon["dataset"] == key[1])
            & (by_horizon["target"] == key[2])
        ]
        lowest_at = []
        horizons = horizons[~horizons["model"].isin(same - {model})]
        for horizon, at in horizons.groupby("horizon", sort=True):
            if model in set(at["model"]) and at.loc[at["mse"].idxmin(), "model"] == model:
                lowest_at.append(int(horizon))
        named = [f"{m} {v:.3f}" for m, v in zip(lower["model"], lower["mse"], strict=True)]
        rows.append({
            "setting": key[0], "dataset": key[1], "target": key[2], "mse": mse, "rank": len(lower) + 1,
            "models": len(group), "lower": named, "lowest_at": lowest_at,
            "horizons": horizons["horizon"].nunique(),
        })  # fmt: skip
    return pd.DataFrame(rows)


def standing_lines(df: pd.DataFrame, model: str) -> list[str]:
    """The markdown of :func:`standing` (nothing when ``model`` has no complete dataset)."""
    table = standing(df, model)
    if table.empty:
        return []
    lowest = int((table["rank"] == 1).sum())
    lines = [
        f"## Where {model} stands",
        "",
        "Its mean MSE over the horizons against every other model's (their seed ensembles "
        f"`{SUFFIX}` included, its own left out; rank 1 = lowest): "
        f"the lowest on {lowest} of {len(table)} datasets. `lowest at H`: the horizons where its mean "
        "over seeds is the lowest of all.",
        "",
        "| setting | dataset | mean MSE | rank | lower mean MSE | lowest at H |",
        "|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lower = ", ".join(r.lower) or "—"
        at = ", ".join(str(h) for h in r.lowest_at) or "—"
        lines.append(
            f"| {r.setting} | {_data_label(r.dataset, r.target)} | {r.mse:.3f} | {r.rank} of {r.models} | "
            f"{lower} | {at} ({len(r.lowest_at)} of {r.horizons}) |"
        )
    return [*lines, ""]


def _counted(values: pd.Series, shown: int = 6) -> str:
    counts = values.value_counts(sort=True)
    parts = [f"{value} ({n})" for value, n in counts.head(shown).items()]
    if len(counts) > shown:
        parts.append(f"{len(counts) - shown} more ({int(counts.iloc[shown:].sum())})")
    return ", ".join(parts)


def provenance_lines(df: pd.DataFrame) -> list[str]:
    """Where the rows come from, with run counts: the code's commits (and runs of uncommitted code,
    whose commit ends in ``-dirty``), package versions, devices and the wall time of all runs."""

    def column(name: str) -> pd.Series:
        values = df[name] if name in df else pd.Series([""] * len(df), index=df.index)
        return values.astype("string").fillna("").astype(str)

    commits = column("git_commit").replace("", "unknown")
    dirty = int(commits.str.endswith("-dirty").sum())
    short = commits.str.slice(0, 7) + commits.str.endswith("-dirty").map({True: "-dirty", False: ""})
    packages = "ecalf " + column("ecalf") + ", torch " + column("torch")
    packages += ", transformers " + column("transformers") + ", peft " + column("peft")
    hours = pd.to_numeric(df["wall_seconds"], errors="coerce").sum() / 3600 if "wall_seconds" in df else 0.0
    lines = [
        "## Provenance\n",
        f"{len(df)} runs, {hours:.1f} h of wall time in all (run counts in brackets).\n",
        f"- code (git commit): {_counted(short)}",
        f"- packages: {_counted(packages)}",
        f"- devices: {_counted(column('device').replace('', 'unknown'))}",
    ]
    if dirty:
        lines.append(
            f"- **{dirty} runs ran uncommitted code** (commit ending in `-dirty`): rerun them from a commit "
            "with `ecalf benchmark GRID --redo-dirty`"
        )
    return [*lines, ""]


def mse_by_model_bars(df: pd.DataFrame) -> list[tuple[tuple[str, str, str], pd.DataFrame]]:
    """The bars of :func:`plot_mse_by_model`: per (setting, dataset, target), the models' horizon-mean
    MSE as in the markdown table (only models with every horizon of the panel), in one model order
    for every panel (:func:`model_order`), with ``err`` the std over seeds (NaN, no error bar, for one
    seed)."""
    means = per_dataset(df)
    order = {model: i for i, model in enumerate(model_order(df))}
    means = means.assign(err=means["mse_std"].where(means["seeds"] > 1))
    panels = []
    for key, sub in means.groupby(["setting", "dataset", "target"], sort=False):
        sub = sub.sort_values("model", key=lambda column: column.map(order), kind="stable")
        panels.append(((str(key[0]), str(key[1]), str(key[2])), sub.reset_index(drop=True)))
    return panels


def published_means(
    df: pd.DataFrame, published: pd.DataFrame | None, setting: str, dataset: str, target: str
) -> pd.DataFrame:
    """The ``published`` means of a (setting, dataset, target) whose results cover the horizons those
    means are over (the protocol's four), else none."""
    if published is None or not _covers_published_means(df, setting, dataset, target):
        return pd.DataFrame(columns=["model", "mse"])
    return _matching(published[published["setting"] == setting], dataset, target, -1)


def plot_mse_by_model(
    df: pd.DataFrame, path: str | os.PathLike[str], published: pd.DataFrame | None = None
) -> Path:
    """One panel per (setting, dataset): bars of the horizon-mean MSE by model, std over seeds, and
    the ``published`` means there are for it as dashed grey lines."""
    from ecalf.plots import grid_shape, hide_unused, new_figure, save_figure

    panels = mse_by_model_bars(df)
    rows, cols = grid_shape(len(panels))
    fig, axes = new_figure(rows, cols, panel_size=(5.0, 3.2))
    colours = {m: f"C{i % 10}" for i, m in enumerate(model_order(df))}
    for ax, ((setting, dataset, target), sub) in zip(axes.flat, panels, strict=False):
        x = np.arange(len(sub))
        ax.bar(x, sub["mse"], yerr=sub["err"], color=[colours[m] for m in sub["model"]], capsize=3)
        ax.set_xticks(x, list(sub["model"]), rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{_data_label(dataset, target)} ({setting})", fontsize=10)
        ax.set_ylabel("test MSE (mean over horizons)", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        quoted = published_means(df, published, setting, dataset, target)
        for i, row in enumerate(quoted.itertuples()):
            style = ("--", ":", "-.")[i % 3]
            ax.axhline(
                row.mse,
                ls=style,
                lw=1.2,
                color=f"{0.15 + 0.15 * (i % 4):.2f}",
                label=f"{row.model}: {row.mse:.3f}",
            )
        if not quoted.empty:
            ax.legend(fontsize=7, framealpha=0.9, title="published (lines)", title_fontsize=7)
    hide_unused(axes, len(panels))
    return save_figure(fig, path)


def plot_models_per_horizon(
    df: pd.DataFrame,
    path: str | os.PathLike[str],
    models: Sequence[str] = ("calf", "ecalf"),
    published: pd.DataFrame | None = None,
) -> Path | None:
    """MSE against horizon for ``models`` (mean ± std over seeds), one panel per (setting, dataset),
    with the ``published`` per-horizon numbers of the same setting and dataset as dashed grey lines."""
    from ecalf.plots import grid_shape, hide_unused, new_figure, save_figure

    horizon = per_horizon(df)
    horizon = horizon[horizon["model"].isin(models)]
    if horizon.empty:
        return None
    panels = list(dict.fromkeys(zip(horizon["setting"], horizon["dataset"], horizon["target"], strict=True)))
    rows, cols = grid_shape(len(panels))
    fig, axes = new_figure(rows, cols, panel_size=(4.6, 3.0))
    for ax, (setting, dataset, target) in zip(axes.flat, panels, strict=False):
        sub = horizon[
            (horizon["setting"] == setting) & (horizon["dataset"] == dataset) & (horizon["target"] == target)
        ]
        for i, model in enumerate(models):
            m = sub[sub["model"] == model].sort_values("horizon")
            if m.empty:
                continue
            ax.errorbar(
                m["horizon"], m["mse"], yerr=m["mse_std"].fillna(0.0), marker="o", capsize=3,
                label=model, color=f"C{i}",
            )  # fmt: skip
        if published is not None:
            quoted = published[
                (published["setting"] == setting) & (published["dataset"] == dataset)
                & (published["target"] == target) & (published["horizon"] > 0)
            ]  # fmt: skip
            for i, (name, rows) in enumerate(quoted.groupby("model", sort=False)):
                rows = rows.sort_values("horizon")
                grey = f"{0.25 + 0.2 * (i % 3):.2f}"  # matplotlib's grey levels
                ax.plot(rows["horizon"], rows["mse"], ls="--", marker="x", color=grey, label=str(name))
        ax.set_title(f"{_data_label(dataset, target)} ({setting})", fontsize=10)
        ax.set_xlabel("horizon", fontsize=8)
        ax.set_ylabel("test MSE", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    hide_unused(axes, len(panels))
    return save_figure(fig, path)


def write_report(
    results: str | os.PathLike[str],
    output_dir: str | os.PathLike[str] | None = None,
    compare: Sequence[str] = ("calf", "ecalf"),
    published: str | os.PathLike[str] | None = None,
    pairs: Sequence[tuple[str, str]] = (),
    standings: Sequence[str] = (),
) -> list[Path]:
    """``<stem>.md``, ``<stem>_mse_by_model.png`` and ``<stem>_per_horizon.png`` beside the CSV
    (or in ``output_dir``), with the ``published`` numbers (a CSV as :data:`ecalf.published.BUILTIN`,
    that file itself by default) beside the measured ones; the cell-by-cell comparison of the two
    ``compare`` models and of each ``(base, other)`` of ``pairs``; where each of ``standings`` stands
    among all models (:func:`standing`). Returns the files written."""
    source = Path(results)
    df = load_results(source)
    quoted = load_published(published) if published is not None else None
    out = Path(output_dir) if output_dir is not None else source.parent
    stem = source.stem
    command = f"ecalf report {source.as_posix()}"
    if published is not None:
        own = Path(published).resolve() != BUILTIN.resolve()
        command += f" --published {Path(published).as_posix()}" if own else " --published"
    if tuple(compare) != ("calf", "ecalf"):
        command += " --compare " + " ".join(compare)
    command += "".join(f" --pair {base} {other}" for base, other in pairs)
    command += "".join(f" --standing {model}" for model in standings)
    title = f"# Results: {stem}\n\nFrom `{source.as_posix()}` ({len(df)} runs). Regenerate with "
    title += f"`{command}`.\n\n"
    chosen = [(compare[0], compare[1])] if len(compare) == 2 else []
    paired = [
        line
        for base, other in dict.fromkeys([*chosen, *pairs])
        for line in paired_comparison_lines(df, base, other)
    ]
    intervals = interval_table(df)
    text = title + markdown_tables(df, quoted) + "\n" + (intervals + "\n" if intervals else "")
    stands = [line for model in dict.fromkeys(standings) for line in standing_lines(df, model)]
    text += "\n".join([*paired, *stands, *provenance_lines(df)])
    written = [write_text(out / f"{stem}.md", text)]
    written.append(plot_mse_by_model(df, out / f"{stem}_mse_by_model.png", quoted))
    per_h = plot_models_per_horizon(df, out / f"{stem}_per_horizon.png", compare, quoted)
    if per_h is not None:
        written.append(per_h)
    return written
