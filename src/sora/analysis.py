"""Post-hoc analysis of trained runs: where SoRA keeps rank, how sparsity evolves, and a comparison report.

Reads the run folders written by ``sora train`` / ``sora schedule`` (``metrics.json``, ``ranks.json``,
``train_log.jsonl``, ``schedule.json``) and writes PNG figures (``DPI`` dots per inch, ``FIG_WIDTH`` inches
wide) plus one self-contained HTML report with a Markdown twin. Figures are drawn on
``matplotlib.figure.Figure`` directly, so no GUI backend is involved, and every file lands atomically.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from sora._io import atomic_write, write_json, write_text
from sora.errors import SoraError
from sora.methods import METHODS

DPI = 120
FIG_WIDTH = 8.0
FIG_HEIGHT = 5.0
HEATMAP_ROW_HEIGHT = 0.375
"""The rank heatmap is ``max(FIG_HEIGHT, 1.5 + HEATMAP_ROW_HEIGHT * rows)`` inches tall."""

_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|blocks)\.(\d+)(?:\.|$)")
_FILLER_TOKENS = frozenset({"self", "dense", "base_layer"})
_ABBREVIATIONS = {"attention": "attn", "self_attn": "attn", "output": "out"}
_MISSING = "—"
_THOUSANDS = FuncFormatter(lambda value, _pos: f"{value:,.0f}")


def parse_module_name(name: str) -> tuple[int | None, str]:
    """Split a dotted module name into (layer index, module type).

    The layer index is the number after the first ``layer.`` / ``layers.`` / ``h.`` / ``blocks.``
    component; the module type is everything after it (``bert.encoder.layer.11.attention.self.query`` ->
    ``(11, "attention.self.query")``). A name with no layer index comes back as ``(None, name)``.
    """
    match = _LAYER_RE.search(name)
    if match is None:
        return None, name
    return int(match.group(1)), name[match.end() :]


def layer_sparsity(ranks: Mapping[str, int], r_max: int) -> dict[int, float]:
    """Share of dead ranks per layer: ``1 - sum(rank) / (modules_in_layer * r_max)``, keyed by layer index.

    Modules without a layer index (e.g. a classifier head) are left out.
    """
    _check_ranks(ranks, r_max)
    live: dict[int, list[int]] = {}
    for name, rank in ranks.items():
        layer, _ = parse_module_name(name)
        if layer is not None:
            live.setdefault(layer, []).append(rank)
    return {layer: 1.0 - sum(live[layer]) / (len(live[layer]) * r_max) for layer in sorted(live)}


def plot_rank_heatmap(ranks: Mapping[str, int], r_max: int, path: str | os.PathLike, title: str | None = None) -> Path:
    """Heatmap of kept ranks: layers as rows (layer 0 on top), module types as columns, ranks in the cells.

    Modules without a layer index go in a last row labelled ``other``; a cell with no module stays blank.
    """
    _check_ranks(ranks, r_max)
    cells: dict[tuple[int | None, str], str] = {}
    for name in ranks:
        cell = parse_module_name(name)
        if cell in cells:
            raise SoraError(f"modules {cells[cell]!r} and {name!r} fall into the same heatmap cell")
        cells[cell] = name
    types = list(dict.fromkeys(mtype for _, mtype in cells))
    indexed = sorted({layer for layer, _ in cells if layer is not None})
    layers: list[int | None] = [*indexed, None] if any(layer is None for layer, _ in cells) else [*indexed]
    grid = np.full((len(layers), len(types)), np.nan)
    for (layer, mtype), name in cells.items():
        grid[layers.index(layer), types.index(mtype)] = ranks[name]

    fig = Figure(
        figsize=(FIG_WIDTH, max(FIG_HEIGHT, 1.5 + HEATMAP_ROW_HEIGHT * len(layers))),
        dpi=DPI,
        layout="constrained",
    )
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="#eeeeee")
    norm = BoundaryNorm(np.arange(-0.5, r_max + 1), cmap.N)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
    for (row, col), value in np.ndenumerate(grid):
        if not np.isnan(value):
            red, green, blue, _ = cmap(norm(value))
            colour = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
            ax.text(col, row, f"{value:.0f}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(types)), _type_labels(types), rotation=30, ha="right")
    ax.set_yticks(range(len(layers)), ["other" if layer is None else str(layer) for layer in layers])
    ax.set_xlabel("module type")
    ax.set_ylabel("layer index")
    ax.set_title(title or f"Kept rank per module (r_max = {r_max})")
    fig.colorbar(image, ax=ax, label="rank", ticks=MaxNLocator(integer=True))
    return _save_png(fig, path)


def plot_layer_sparsity(sparsity: Mapping[int, float], path: str | os.PathLike, title: str | None = None) -> Path:
    """Bar chart of the share of dead ranks per layer (0 = every rank kept, 1 = layer fully pruned)."""
    if not sparsity:
        raise SoraError("no per-layer sparsity to plot (no module name has a layer index)")
    layers = sorted(sparsity)
    values = [sparsity[layer] for layer in layers]
    fig = Figure(figsize=(FIG_WIDTH, FIG_HEIGHT), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(layers, values, color="tab:blue", label="per layer")
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(float(np.mean(values)), color="tab:red", linestyle="--", label=f"mean {np.mean(values):.2f}")
    ax.set_xticks(layers)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("layer index")
    ax.set_ylabel("share of dead ranks (fraction, 0–1)")
    ax.set_title(title or "Pruned share of rank per layer")
    ax.legend(loc="upper left")
    return _save_png(fig, path)


def plot_live_ranks(
    log_rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike,
    title: str | None = None,
    show_params: bool = True,
) -> Path:
    """Live ranks against training step from ``train_log.jsonl`` rows, several runs overlaid for a dict.

    ``log_rows`` is one run's rows or ``{label: rows}``; rows without ``live_ranks`` (eval rows, non-SoRA
    runs) are skipped. With ``show_params`` the non-zero parameter count goes on a second axis (dashed).
    """
    series = log_rows if isinstance(log_rows, Mapping) else {"": log_rows}
    fig = Figure(figsize=(FIG_WIDTH, FIG_HEIGHT), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    params_ax = ax.twinx() if show_params else None
    plotted = 0
    for index, (label, rows) in enumerate(series.items()):
        points = [row for row in rows if "step" in row and "live_ranks" in row]
        if not points:
            continue
        colour = f"C{index % 10}"
        steps = [row["step"] for row in points]
        ax.plot(steps, [row["live_ranks"] for row in points], color=colour, label=f"{label} live ranks".strip())
        counted = [row for row in points if "nonzero_params" in row]
        if params_ax is not None and counted:
            params_ax.plot(
                [row["step"] for row in counted],
                [row["nonzero_params"] for row in counted],
                color=colour,
                linestyle="--",
                label=f"{label} non-zero params".strip(),
            )
        plotted += 1
    if not plotted:
        raise SoraError("no training log row has 'live_ranks' (only SoRA runs log them)")
    ax.set_xlabel("training step")
    ax.set_ylabel("live ranks (count, all modules)")
    ax.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    if params_ax is not None:
        params_ax.set_ylabel("non-zero adapter parameters (count)")
        params_ax.yaxis.set_major_formatter(_THOUSANDS)
        params_ax.set_ylim(bottom=0)
        more_handles, more_labels = params_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    ax.set_title(title or "Live ranks during training")
    return _save_png(fig, path)


def plot_schedule_curves(schedule: Mapping[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Memorization (train) and generalization (dev) of the primary metric against non-zero parameters.

    The paper's Figure 3, drawn from ``schedule.json``: the x axis runs from dense (left) to sparse
    (right), and each stage is labelled with its sparsity strength xi.
    """
    metric = schedule.get("primary_metric")
    stages = schedule.get("stages")
    if not metric or not stages:
        raise SoraError("schedule has no 'primary_metric' or no 'stages'")
    for stage in stages:
        if "nonzero_params" not in stage or "xi" not in stage:
            raise SoraError(f"schedule stage {stage.get('stage', '?')} lacks 'nonzero_params' or 'xi'")
    fig = Figure(figsize=(FIG_WIDTH, FIG_HEIGHT), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for split, label, marker in (
        ("train", "train (memorization)", "o"),
        ("dev", "dev (generalization)", "s"),
    ):
        points = [(s["nonzero_params"], s[split][metric]) for s in stages if metric in s.get(split, {})]
        if points:
            ax.plot(*zip(*points, strict=True), marker=marker, label=label)
    if not ax.lines:
        raise SoraError(f"no schedule stage reports train or dev {metric!r}")
    for stage in stages:
        scores = [stage[split][metric] for split in ("train", "dev") if metric in stage.get(split, {})]
        if scores:
            ax.annotate(
                f"ξ={stage['xi']:g}",
                (stage["nonzero_params"], max(scores)),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=8,
            )
    ax.invert_xaxis()
    ax.xaxis.set_major_formatter(_THOUSANDS)
    ax.set_xlabel("non-zero parameters (count; dense → sparse)")
    ax.set_ylabel(f"{metric} (score)")
    kind = schedule.get("schedule", "schedule")
    ax.set_title(title or f"Memorization vs generalization: {schedule.get('task', '')} ({kind})")
    ax.margins(y=0.15)
    ax.legend(loc="best")
    return _save_png(fig, path)


def read_train_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``train_log.jsonl`` (blank lines skipped); a line that is not JSON is a SoraError."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise SoraError(f"{path}: line {number} is not valid JSON ({exc.msg})") from exc
    return rows


def analyze_ranks(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read a run's ``ranks.json``; write ``ranks.png``, ``layer_sparsity.json`` and ``layer_sparsity.png``.

    Returns ``{"ranks": {module: rank}, "r_max": int, "layer_sparsity": {layer: share of dead ranks}}``.
    """
    run_dir = Path(run_dir)
    ranks, r_max = _load_ranks(run_dir)
    sparsity = layer_sparsity(ranks, r_max)
    plot_rank_heatmap(ranks, r_max, run_dir / "ranks.png", title=f"Kept rank per module: {run_dir.name}")
    write_json(
        run_dir / "layer_sparsity.json",
        {"r_max": r_max, "layer_sparsity": {str(layer): share for layer, share in sparsity.items()}},
    )
    plot_layer_sparsity(sparsity, run_dir / "layer_sparsity.png", title=f"Pruned share per layer: {run_dir.name}")
    return {"ranks": ranks, "r_max": r_max, "layer_sparsity": sparsity}


def write_report(run_dirs: Sequence[str | os.PathLike], output: str | os.PathLike) -> Path:
    """Write a comparison report of ``run_dirs`` to ``output`` (an ``.html`` path) and return that path.

    The HTML page is self-contained (figures as base64 PNG data URIs). Beside it go ``<stem>.md`` with the
    same content and ``<stem>_files/`` holding its figures as PNG files. Sections: a side-by-side table,
    rank heatmap and per-layer sparsity of each SoRA run, live ranks during training (runs with a
    ``train_log.jsonl`` that logs them) and schedule curves (runs with a ``schedule.json``).
    """
    output = Path(output)
    if output.suffix.lower() != ".html":
        raise SoraError(f"report output must be an .html path, got {output}")
    if not run_dirs:
        raise SoraError("no run folders given for the report")
    runs = _load_runs([Path(d) for d in run_dirs])
    files_dir = output.with_name(f"{output.stem}_files")
    blocks = _report_blocks(runs, files_dir)
    write_text(output.with_suffix(".md"), _to_markdown(blocks, files_dir.name))
    return write_text(output, _to_html(blocks, files_dir))


@dataclass
class _Run:
    name: str
    path: Path
    metrics: dict[str, Any]
    log: list[dict[str, Any]]
    schedule: dict[str, Any] | None


# A report block: ("h", level, text) | ("p", text) | ("table", header, rows) | ("img", file_name, alt_text).
_Block = tuple


def _check_ranks(ranks: Mapping[str, int], r_max: int) -> None:
    if not ranks:
        raise SoraError("no ranks given (full fine-tuning and BitFit runs have none)")
    if isinstance(r_max, bool) or not isinstance(r_max, int) or r_max < 1:
        raise SoraError(f"r_max must be a positive integer, got {r_max!r}")
    for name, rank in ranks.items():
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= r_max:
            raise SoraError(f"rank of {name!r} must be an integer in [0, {r_max}], got {rank!r}")


def _type_labels(types: Sequence[str]) -> list[str]:
    """Short column labels: drop filler components, abbreviate, keep the shortest suffix that stays unique.

    ``attention.self.query`` -> ``query``; ``attention.output.dense`` -> ``attn.out`` while
    ``output.dense`` -> ``out``; ``attn.c_proj`` and ``mlp.c_proj`` keep their parents. Falls back to the
    full types if two of them shorten to the same label.
    """
    tokens = []
    for mtype in types:
        kept = [part for part in mtype.split(".") if part not in _FILLER_TOKENS] or mtype.split(".")
        tokens.append([_ABBREVIATIONS.get(part, part) for part in kept])
    labels = []
    for index, parts in enumerate(tokens):
        others = [other for j, other in enumerate(tokens) if j != index]
        length = 1
        while length < len(parts) and any(other[-length:] == parts[-length:] for other in others):
            length += 1
        labels.append(".".join(parts[-length:]))
    return labels if len(set(labels)) == len(labels) else list(types)


def _save_png(fig: Figure, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "run"


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise SoraError(f"run folder {path.parent} has no {path.name}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SoraError(f"{path} is not valid JSON ({exc.msg})") from exc


def _load_ranks(run_dir: Path) -> tuple[dict[str, int], int]:
    """Ranks and r_max from ``ranks.json``; a null r_max falls back to ``hyperparameters.r`` of metrics."""
    data = _read_json(run_dir / "ranks.json")
    ranks = data.get("ranks") or {}
    if not ranks:
        raise SoraError(f"run {run_dir} has no ranks in ranks.json (full fine-tuning and BitFit have none)")
    r_max = data.get("r_max")
    if r_max is None and (run_dir / "metrics.json").is_file():
        r_max = _read_json(run_dir / "metrics.json").get("hyperparameters", {}).get("r")
    if r_max is None:
        raise SoraError(f"run {run_dir} gives no r_max in ranks.json nor hyperparameters.r in metrics.json")
    return ranks, r_max


def _load_runs(paths: list[Path]) -> list[_Run]:
    """Load each run folder; names are folder names, or the paths as given if folder names repeat."""
    names = [path.name for path in paths]
    if len(set(names)) < len(names):
        names = [str(path) for path in paths]
    runs = []
    for name, path in zip(names, paths, strict=True):
        if not path.is_dir():
            raise SoraError(f"run folder {path} does not exist")
        log_path, schedule_path = path / "train_log.jsonl", path / "schedule.json"
        runs.append(
            _Run(
                name=name,
                path=path,
                metrics=_read_json(path / "metrics.json"),
                log=read_train_log(log_path) if log_path.is_file() else [],
                schedule=_read_json(schedule_path) if schedule_path.is_file() else None,
            )
        )
    return runs


def _fmt_metric(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _MISSING if value is None else str(value)
    return f"{value:.4f}"


def _fmt_count(value: Any) -> str:
    return _MISSING if value is None else f"{value:,}"


def _fmt_seconds(value: Any) -> str:
    return _MISSING if value is None else f"{value:.1f}"


def _comparison_table(runs: list[_Run]) -> _Block:
    """Runs as columns, one row per field; eval rows are the union of every run's dev metrics."""
    metrics = [run.metrics for run in runs]
    eval_keys = list(dict.fromkeys(key for m in metrics for key in m.get("eval", {})))
    rows = [
        ["task", *(str(m.get("task", _MISSING)) for m in metrics)],
        ["method", *(str(m.get("method", _MISSING)) for m in metrics)],
        ["seed", *(str(m.get("seed", _MISSING)) for m in metrics)],
        ["primary metric", *(str(m.get("primary_metric", _MISSING)) for m in metrics)],
        [
            "dev primary metric (kept checkpoint)",
            *(_fmt_metric(m.get("eval", {}).get(m.get("primary_metric"))) for m in metrics),
        ],
        *([f"eval {key}", *(_fmt_metric(m.get("eval", {}).get(key)) for m in metrics)] for key in eval_keys),
        ["trainable params", *(_fmt_count(m.get("trainable_params")) for m in metrics)],
        ["non-zero params", *(_fmt_count(m.get("nonzero_params")) for m in metrics)],
        ["train seconds", *(_fmt_seconds(m.get("train_seconds")) for m in metrics)],
        ["seconds per epoch", *(_fmt_seconds(m.get("seconds_per_epoch")) for m in metrics)],
    ]
    return ("table", ["", *(run.name for run in runs)], rows)


def _report_blocks(runs: list[_Run], files_dir: Path) -> list[_Block]:
    """The report's content, rendering its figures into ``files_dir`` along the way."""
    blocks: list[_Block] = [
        ("h", 1, "SoRA run report"),
        ("p", f"{len(runs)} run(s): {', '.join(run.name for run in runs)}."),
        ("h", 2, "Comparison"),
        ("p", "Dev metrics are those of the kept checkpoint; metrics to 4 decimals, times in seconds."),
        _comparison_table(runs),
    ]
    sora_runs = [run for run in runs if getattr(METHODS.get(run.metrics.get("method")), "gated", False)]
    if sora_runs:
        blocks.append(("h", 2, "Kept ranks of the SoRA runs"))
    for index, run in enumerate(sora_runs):
        ranks, r_max = _load_ranks(run.path)
        sparsity = layer_sparsity(ranks, r_max)
        live = sum(ranks.values())
        stem = files_dir / f"{index:02d}_{_slug(run.name)}"
        heatmap = plot_rank_heatmap(ranks, r_max, f"{stem}_ranks.png", title=f"Kept rank per module: {run.name}")
        bars = plot_layer_sparsity(sparsity, f"{stem}_layer_sparsity.png", title=f"Pruned share per layer: {run.name}")
        blocks += [
            ("h", 3, run.name),
            (
                "p",
                f"{live:,} of {len(ranks) * r_max:,} ranks live across {len(ranks):,} modules "
                f"(r_max = {r_max}); {1 - live / (len(ranks) * r_max):.4f} of all ranks pruned.",
            ),
            ("img", heatmap.name, f"rank heatmap of {run.name}"),
            ("img", bars.name, f"per-layer sparsity of {run.name}"),
        ]
    logged = {run.name: run.log for run in runs if any("live_ranks" in row for row in run.log)}
    if logged:
        blocks += [
            ("h", 2, "Live ranks during training"),
            (
                "img",
                plot_live_ranks(logged, files_dir / "live_ranks.png").name,
                "live ranks against training step",
            ),
        ]
    scheduled = [run for run in runs if run.schedule is not None]
    if scheduled:
        blocks.append(("h", 2, "Sparsification schedules"))
    for index, run in enumerate(scheduled):
        metric = run.schedule.get("primary_metric")
        curve = plot_schedule_curves(
            run.schedule,
            files_dir / f"{index:02d}_{_slug(run.name)}_schedule.png",
            title=f"Memorization vs generalization: {run.name}",
        )
        rows = [
            [
                str(s.get("stage", _MISSING)),
                f"{s['xi']:g}",
                _fmt_count(s.get("nonzero_params")),
                _fmt_count(s.get("live_ranks")),
                _fmt_metric(s.get("train", {}).get(metric)),
                _fmt_metric(s.get("dev", {}).get(metric)),
            ]
            for s in run.schedule["stages"]
        ]
        blocks += [
            ("h", 3, f"{run.name} ({run.schedule.get('schedule', 'schedule')} schedule)"),
            ("img", curve.name, f"schedule curves of {run.name}"),
            (
                "table",
                ["stage", "xi", "non-zero params", "live ranks", f"train {metric}", f"dev {metric}"],
                rows,
            ),
        ]
    return blocks


def _to_html(blocks: list[_Block], files_dir: Path) -> str:
    """One self-contained page: figures are read from ``files_dir`` and inlined as base64 data URIs."""
    esc = html.escape
    body = []
    for block in blocks:
        match block:
            case ("h", level, text):
                body.append(f"<h{level}>{esc(text)}</h{level}>")
            case ("p", text):
                body.append(f"<p>{esc(text)}</p>")
            case ("table", header, rows):
                head = "".join(f"<th>{esc(cell)}</th>" for cell in header)
                cells = "".join("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
            case ("img", name, alt):
                data = base64.b64encode((files_dir / name).read_bytes()).decode("ascii")
                body.append(f'<p><img src="data:image/png;base64,{data}" alt="{esc(alt)}"></p>')
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>SoRA run report</title>'
        f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _to_markdown(blocks: list[_Block], files_dir_name: str) -> str:
    """The same content as Markdown; figures are linked from ``<files_dir_name>/`` beside the file."""

    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    parts = []
    for block in blocks:
        match block:
            case ("h", level, text):
                parts.append(f"{'#' * level} {text}")
            case ("p", text):
                parts.append(text)
            case ("table", header, rows):
                parts.append("\n".join([row(header), row(["---"] * len(header)), *(row(r) for r in rows)]))
            case ("img", name, alt):
                parts.append(f"![{alt}]({quote(files_dir_name)}/{quote(name)})")
    return "\n\n".join(parts) + "\n"
