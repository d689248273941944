"""Tables of runs: the runs list, compare and eval, as a Rich table, CSV, Markdown or JSON, fitted to the width."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime
from pathlib import Path

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .. import metrics, tasks
from .read import _read_mapping, all_keys, reads, value_of, varying_keys

FORMATS = ("table", "csv", "markdown", "json")


STATUS_STYLE = {"completed": "green", "running": "cyan", "interrupted": "yellow", "failed": "red",
                "killed": "red", "paused": "yellow", "pruned": "magenta", "damaged": "bold red"}


def console() -> Console:
    """Rich console as wide as the terminal, or as COLUMNS (80 when unset) off a terminal."""
    return Console(highlight=False)


def cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "[" + ", ".join(str(i) for i in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _text(key: str, v) -> str:
    if key in metrics.METRICS:
        return metrics.text(key, v)
    if key == "started" and v:
        try:
            return datetime.fromisoformat(v).strftime("%Y-%m-%d %H:%M")
        except ValueError:
            return str(v)
    return cell(v)


def word_widths(texts: list[list[str]], width: int) -> list[int] | None:
    """Column widths, one per list of texts (header and cells), that fit a table in width without
    breaking a word: the widest columns give way first, none below its longest word. None when
    even that does not fit (then Rich's own widths, which fold words)."""
    natural = [max(cell_len(line) for t in col for line in t.splitlines() or [""]) for col in texts]
    least = [max([cell_len(w) for t in col for w in t.split()] or [1]) for col in texts]
    if _table_width(least) > width:
        return None
    widths = list(natural)
    while _table_width(widths) > width:
        i = max((i for i in range(len(widths)) if widths[i] > least[i]), key=widths.__getitem__)
        widths[i] -= 1
    return widths


class _WordTable(Table):
    """A Table that wraps its columns between words when it can (Rich's own narrowing cuts the
    widest columns down together, mid-word: `model.hidd`/`en`)."""

    def __init__(self, texts: list[list[str]], **kwargs):
        super().__init__(**kwargs)
        self._texts = texts

    def __rich_console__(self, console, options):
        widths = word_widths(self._texts, options.max_width)
        for column, w in zip(self.columns, widths or [None] * len(self.columns)):
            column.width = w
        yield from super().__rich_console__(console, options)


def rich_table(title: str, columns: list[tuple[str, str]], texts: list[list[str]],
               caption: str | None = None, first_best: bool = False) -> Table:
    """A Rich table of plain texts (never markup); a cell too wide wraps between words, and folds
    only a word wider than any column can be; it is never cut.

    first_best: the first row is the best one, shown in bold green."""
    by_column = [[header] + [row[j] for row in texts] for j, (_, header) in enumerate(columns)]
    table = _WordTable(by_column, title=title, box=box.SIMPLE_HEAD, caption=caption,
                       title_justify="left", caption_justify="left")
    for key, header in columns:
        numeric = key in metrics.METRICS or key.endswith(("_mean", "_std"))
        table.add_column(header, justify="right" if numeric else "left", overflow="fold")
    for i, text in enumerate(texts):
        table.add_row(*[Text(t, style=STATUS_STYLE.get(t, "")) if k == "status" else Text(t)
                        for (k, _), t in zip(columns, text)],
                      style="bold green" if first_best and i == 0 else None)
    return table


def as_csv(columns: list[tuple[str, str]], rows: list[dict]) -> str:
    """CSV of the rows' values, headed by the column keys."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([k for k, _ in columns])
    writer.writerows([["" if r.get(k) is None else _csv(r.get(k)) for k, _ in columns] for r in rows])
    return buf.getvalue()


def as_markdown(columns: list[tuple[str, str]], texts: list[list[str]], first_best: bool = False) -> str:
    """A Markdown table of the texts under the column headers; first_best: the first row in bold."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for i, row in enumerate(texts):
        cells = [t.replace("|", "\\|") for t in row]
        if first_best and i == 0:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render(title: str, columns: list[tuple[str, str]], rows: list[dict], texts: list[list[str]],
           fmt: str, out: Console, caption: str | None = None) -> None:
    """Print rows as a Rich table, CSV, Markdown or JSON; columns are (key, header) pairs."""
    if fmt == "json":
        print(json.dumps([{k: r.get(k) for k, _ in columns} for r in rows], indent=2, default=str))
    elif fmt == "csv":
        print(as_csv(columns, rows), end="")
    elif fmt == "markdown":
        print(as_markdown(columns, texts), end="")
    else:
        out.print(rich_table(title, columns, texts, caption))


def _csv(v):
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def _table_width(widths: list[int]) -> int:
    """Width of a rich_table whose columns need these widths: padding 1 each side, edges and gaps 1."""
    return sum(w + 2 for w in widths) + len(widths) + 1


def _column_widths(columns: list[tuple[str, str, float]], texts: dict[str, list[str]]) -> dict[str, int]:
    return {k: max([cell_len(h)] + [cell_len(t) for t in texts[k]]) for k, h, _ in columns}


def runs_columns(rows: list[dict], all_columns: bool, first: tuple[str, ...] = ()) -> list[tuple[str, str, float]]:
    """(key, header, priority) of the runs table in display order; lower priority numbers are kept first.

    Name and status come first, then each task's headline metric, then the settings that differ
    among these runs, then the other metrics, times and the start time."""
    params = all_keys(rows) if all_columns else varying_keys(rows)
    shown = [m for r in rows for m in tasks.get(r["task"]).columns]
    headline = {tasks.get(r["task"]).columns[0] for r in rows if tasks.get(r["task"]).columns}
    model_varies = all_columns or len({r["model"] for r in rows}) > 1
    if model_varies:  # the model column names the task of runs that are not classifiers
        params = [k for k in params if k != "task"]
    return ([("run", "run", 0), ("status", "status", 1)]
            + [("model", "model", 3)] * model_varies
            + [(k, k, (3.5 if k in first else 4) + i / 1000) for i, k in enumerate(params)]
            + [(m, metrics.METRICS[m].label, 2 if m in headline else 5) for m in dict.fromkeys(shown)]
            + [("epochs", "epochs", 6), ("wall_seconds", "wall time", 7), ("started", "started", 8)])


def fit_columns(columns: list[tuple[str, str, float]], texts: dict[str, list[str]],
                width: int) -> tuple[list[tuple[str, str, float]], list[str]]:
    """The columns, by priority, that fit in width whole; and the headers of those left out."""
    widths = _column_widths(columns, texts)
    kept: list[tuple[str, str, float]] = []
    for col in sorted(columns, key=lambda c: c[2]):
        if _table_width([widths[k] for k, _, _ in kept + [col]]) <= width or col[2] <= 1:
            kept.append(col)
    return [c for c in columns if c in kept], [h for k, h, _ in columns if (k, h, _) not in kept]


def _some(names: list[str], n: int = 6) -> str:
    return ", ".join(names) if len(names) <= n else f"{', '.join(names[:n])} and {len(names) - n} more"


def runs_table(rows: list[dict], fmt: str, all_columns: bool, out: Console,
               first: tuple[str, ...] = ()) -> None:
    """The runs table: name, status, each task's metrics and the settings that differ, fitted to
    the width; first: settings kept before the others (a sweep folder's swept keys)."""
    columns = runs_columns(rows, all_columns, first + ("optim.name", "optim.lr"))
    task_metrics = {m for r in rows for m in tasks.get(r["task"]).columns}
    # a metric of another task stays empty: no loss column filled for classifiers
    flat = [{**{k: None if k in task_metrics and k not in tasks.get(r["task"]).columns else value_of(r, k)
                for k, _, _ in columns}, "run_dir": str(r["dir"]), "problem": r["problem"]}
            for r in rows]
    if fmt != "table":
        extra = [("run_dir", "run_dir"), ("problem", "problem")] if fmt == "json" else []
        pairs = [(k, h) for k, h, _ in columns] + extra
        render("", pairs, flat, [[_text(k, f[k]) for k, _ in pairs] for f in flat], fmt, out)
        return
    texts = {k: ["" if k in task_metrics and k not in tasks.get(r["task"]).columns else _text(k, f[k])
                 for r, f in zip(rows, flat)] for k, _, _ in columns}
    dropped: list[str] = []
    if not all_columns:
        columns, dropped = fit_columns(columns, texts, out.width)
    pairs = [(k, h) for k, h, _ in columns]
    cells = [[texts[k][i] for k, _ in pairs] for i in range(len(rows))]
    if all_columns and not out.is_terminal:  # asked for everything: as wide as it takes
        needed = _table_width(list(_column_widths(columns, texts).values()))
        out = Console(highlight=False, width=max(out.width, needed))
    out.print(rich_table(f"{len(rows)} run{'s' * (len(rows) != 1)}", pairs, cells))
    notes = []
    hidden = len(all_keys(rows)) - len(varying_keys(rows))
    if hidden and not all_columns:
        notes.append(f"{hidden} settings equal in every listed run are hidden.")
    if dropped:
        notes.append(f"Left out to fit {out.width} columns: {_some(dropped)}.")
    if notes:
        notes.append("--all-columns shows every column; --format csv or json every value.")
    notes += [f"{r['run']}: damaged: {r['problem']}." for r in rows if r["problem"]]
    for note in notes:
        out.print(Text(note))


COMPARE_METRICS = ("epochs", "params", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                   "best_val_accuracy", "best_epoch", "test_loss", "test_accuracy", "f", "x_norm",
                   "lstsq_gap", "train_seconds", "wall_seconds")


def compare(rows: list[dict], fmt: str, all_keys_: bool, out: Console) -> None:
    """Config differences and metrics of a few runs, side by side (one column per run)."""
    names = [r["run"] for r in rows]
    keys = all_keys(rows) if all_keys_ else varying_keys(rows, kind=True)
    if len({r["run"] for r in rows}) < len(rows):
        names = [str(r["dir"]) for r in rows]
    config_rows = [{"key": k, **{n: r["config"].get(k) for n, r in zip(names, rows)}} for k in keys]
    metric_rows = [{"key": "status", **{n: r["status"] for n, r in zip(names, rows)},
                    "_text": [r["status"] for r in rows]}]
    for name in COMPARE_METRICS:
        values = [r[name] for r in rows]
        if any(v is not None for v in values):  # a task's own metrics only
            metric_rows.append({"key": name, **dict(zip(names, values)),
                                "_text": [metrics.text(name, v) for v in values]})
    evals = sorted({p.stem for r in rows for p in (r["dir"] / "evals").glob("*.json")})
    for name in evals:
        values = [_eval_accuracy(r["dir"] / "evals" / f"{name}.json") for r in rows]
        metric_rows.append({"key": f"eval {name} accuracy", **dict(zip(names, values)),
                            "_text": [metrics.percent(v) for v in values]})
    columns = [("key", "setting")] + [(n, n) for n in names]
    if fmt == "json":
        print(json.dumps({"runs": [str(r["dir"]) for r in rows],
                          "config": {c["key"]: [c[n] for n in names] for c in config_rows},
                          "metrics": {m["key"]: [m[n] for n in names] for m in metric_rows}},
                         indent=2, default=str))
        return
    if config_rows:
        texts = [[c["key"]] + [cell(c[n]) if reads(r, c["key"]) else "(unread)"
                               for n, r in zip(names, rows)] for c in config_rows]
        render("config differences" if not all_keys_ else "config", columns, config_rows, texts,
               fmt, out)
    else:
        out.print("The runs have the same config." if fmt == "table" else "same config")
    if fmt == "markdown":
        print()
    columns = [("key", "metric")] + [(n, n) for n in names]
    texts = [[m["key"]] + m["_text"] for m in metric_rows]
    render("metrics", columns, metric_rows, texts, fmt, out)


def _eval_accuracy(path: Path) -> float | None:
    """The accuracy a saved eval recorded; None when it is missing or damaged."""
    result, problem = _read_mapping(path, json.loads)
    v = result.get("accuracy")
    return v if not problem and isinstance(v, (int, float)) and not isinstance(v, bool) else None


def eval_tables(result: dict, out: Console) -> None:
    """Summary line, per-class accuracy, confusion matrix and most confused pairs of an eval."""
    where = result["run_dir"] or result["checkpoint"]
    split = result["split"]  # test, val or train: the metric of that split's accuracy and loss
    out.print(Text.assemble(
        (str(where), "bold"), f" {Path(result['checkpoint']).name} (epoch {result['epoch']}) on the {split} split "
        f"of {result['dataset']}: {result['n']} images, loss "
        f"{metrics.text(f'{split}_loss', result['loss'])}, accuracy ",
        (metrics.text(f"{split}_accuracy", result["accuracy"]), "bold")))
    names = [escape(n) for n in result["class_names"]]
    per = Table(title="per-class accuracy", box=box.SIMPLE_HEAD, title_justify="left")
    for header, justify in (("class", "right"), ("name", "left"), ("images", "right"),
                            ("correct", "right"), ("accuracy", "right")):
        per.add_column(header, justify=justify)
    for c in result["per_class"]:
        per.add_row(str(c["class"]), names[c["class"]], str(c["n"]), str(c["correct"]),
                    metrics.percent(c["accuracy"]))
    out.print(per)
    conf = Table(title="confusion matrix (rows: true class, columns: predicted)",
                 box=box.SIMPLE_HEAD, title_justify="left")
    conf.add_column("true \\ predicted")
    for c in range(len(names)):
        conf.add_column(str(c), justify="right")
    for t, row in enumerate(result["confusion"]):
        conf.add_row(f"{t} {names[t]}", *[f"[bold]{v}[/]" if i == t else (str(v) if v else "[dim]0[/]")
                                          for i, v in enumerate(row)])
    out.print(conf)
    if result["most_confused"]:
        mc = Table(title="most confused pairs", box=box.SIMPLE_HEAD, title_justify="left")
        for header, justify in (("true", "left"), ("predicted as", "left"), ("images", "right"),
                                ("share of true class", "right")):
            mc.add_column(header, justify=justify)
        for c in result["most_confused"]:
            mc.add_row(names[c["true"]], names[c["predicted"]], str(c["count"]),
                       metrics.percent(c["share"]))
        out.print(mc)
    if result["saved"]:
        out.print(f"saved {result['saved']}", markup=False)



def break_path(path: str, width: int) -> str:
    """A path on lines of at most width cells, broken after a '/', never inside a name (a name
    longer than width stays whole on its own line)."""
    lines = [""]
    for part in re.split(r"(?<=/)", path):  # each piece keeps its trailing slash
        if lines[-1] and cell_len(lines[-1] + part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


def predictions_table(results: list[dict], width: int) -> Table:
    """predict's table: each image's path and its top classes with their probabilities. A path too
    long for the line breaks after a '/' and a class's name and probability break apart, so that
    neither a file name nor a word is ever cut."""
    headers = ("1st", "2nd", "3rd")
    rows = [(r["file"], [f"{t['name']} {100 * t['probability']:.1f}%" for t in r["top"]])
            for r in results if "top" in r]
    gaps = 2 * len(headers)  # a space each side of a column, none at the table's edges

    def widest(texts, split=False) -> int:
        return max((cell_len(w) for t in texts for w in (t.split() if split else [t])), default=0)

    tops = [[top[i] for _, top in rows if i < len(top)] + [h] for i, h in enumerate(headers)]
    left = width - gaps - sum(widest(t) for t in tops)  # beside the classes on one line each
    if left < max(cell_len(path) for path, _ in rows):
        names = widest([part for path, _ in rows for part in re.split(r"(?<=/)", path)])
        left = max(left, min(names, width - gaps - sum(widest(t, split=True) for t in tops)))
    table = Table(box=None, pad_edge=False)
    table.add_column("image", no_wrap=True)
    for header in headers:
        table.add_column(header)  # wraps between a class's name and its probability
    for path, top in rows:
        table.add_row(Text(break_path(path, left)), *[Text(t) for t in top])
    return table
