"""Look at what was trained: the runs table, side-by-side comparison, evaluation tables and plots."""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from datetime import datetime
from pathlib import Path

import yaml
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from . import files, metrics, rundir
from .config import flatten
from .errors import RunError

FORMATS = ("table", "csv", "markdown", "json")
STATUS_STYLE = {"completed": "green", "running": "cyan", "interrupted": "yellow", "failed": "red",
                "killed": "red", "paused": "yellow", "pruned": "magenta", "damaged": "bold red"}
# keys every run has but that are not hyperparameters
NOT_PARAMS = ("name", "runs_dir", "model.kind")


def console() -> Console:
    """Rich console as wide as the terminal, or as COLUMNS (80 when unset) off a terminal."""
    return Console(highlight=False)


# ---------------------------------------------------------------- reading runs


def resolve_run(arg: str | Path, runs_dir: str | Path = "runs") -> Path:
    """A run directory given as a path, or by its name inside runs/."""
    path = Path(arg)
    if not path.exists() and not path.is_absolute() and (Path(runs_dir) / path).is_dir():
        path = Path(runs_dir) / path
    if not path.is_dir():
        raise RunError(f"{arg}: no such run directory. Give the path of a run made by "
                       "'mnistlab train'; 'mnistlab runs' lists them.")
    if not _is_run(path):
        raise RunError(f"{path}: is not a run directory (it has no summary.json). Give the path "
                       "of a run made by 'mnistlab train'; 'mnistlab runs' lists them.")
    return path


def _read_mapping(path: Path, parse) -> tuple[dict, str | None]:
    """A JSON or YAML file holding a mapping, or {} and a short reason why it cannot be used."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return {}, f"{path.name} is missing"
    except UnicodeDecodeError:
        return {}, f"{path.name} is binary, not text"
    except OSError as e:
        return {}, f"{path.name} cannot be read ({e.strerror or type(e).__name__})"
    try:
        data = parse(text)
    except (ValueError, RecursionError, yaml.YAMLError):
        return {}, f"{path.name} is truncated or not valid {path.suffix[1:].upper()}"
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        return {}, f"{path.name} is {what}"
    return data, None


def model_name(config: dict) -> str | None:
    """The model column: model.kind, or the task's name for tasks that have no model section."""
    return task_label(flatten(config))[0]


def table_metrics(task: str) -> tuple[str, ...]:
    """The metrics the runs table shows for a task, its headline first."""
    return {"classify": ("test_accuracy", "val_accuracy", "best_val_accuracy"),
            "linreg": ("val_loss",), "quadratic": ("f",)}.get(task, ())


def read_run(path: Path) -> dict:
    """Summary, flat config, status and metrics of one run directory; never raises.

    A run whose summary.json or config.yaml cannot be used has status 'damaged' and a 'problem'."""
    path = Path(path)
    summary, problem = _read_mapping(path / "summary.json", json.loads)
    config, config_problem = _read_mapping(path / "config.yaml", yaml.safe_load)
    problem = problem or config_problem
    status = summary.get("status")
    if not problem and not isinstance(status, str):
        problem = "summary.json has no status"
    if not problem:
        try:
            status = rundir.run_status(summary)
        except (TypeError, ValueError, OverflowError):
            problem = "summary.json has an invalid pid"
    started = summary.get("started")
    if not isinstance(started, str):  # damaged: the time in the directory's name
        stamp = re.match(r"(\d{4})(\d\d)(\d\d)-(\d\d)(\d\d)(\d\d)", path.name)
        started = "{}-{}-{}T{}:{}:{}".format(*stamp.groups()) if stamp else None
    task = config.get("task") or summary.get("task") or "classify"
    row = {"dir": path, "run": path.name, "config": flatten(config), "summary": summary,
           "task": task if isinstance(task, str) else "?", "model": model_name(config),
           "started": started,
           "status": "damaged" if problem else status, "problem": problem}
    row.update({name: metrics.value(summary, name) for name in metrics.METRICS})
    return row


def load_run(path: Path) -> dict:
    """read_run of a run that compare or plot needs whole: a damaged one is a RunError."""
    row = read_run(path)
    if row["problem"]:
        raise RunError(f"{path}: {row['problem']}, so the run is damaged and cannot be shown. "
                       "Leave it out ('mnistlab runs' lists it as damaged), put back the file from "
                       "a copy if you have one, or delete the run directory.")
    return row


def _is_run(path: Path) -> bool:
    """A directory train wrote: it has a summary.json, or a config.yaml beside its log or checkpoints."""
    return (path / "summary.json").exists() or ((path / "config.yaml").exists() and (
        (path / "metrics.jsonl").exists() or (path / "checkpoints").is_dir()))


def find_runs(runs_dir: Path) -> list[dict]:
    """Every run under runs_dir (a run directory itself counts), damaged ones too, oldest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise RunError(f"{runs_dir}: no such directory. Give the directory that holds your runs "
                       "(runs_dir in the config, 'runs' by default).")
    found = {p.parent for name in ("summary.json", "config.yaml") for p in runs_dir.rglob(name)}
    out = [read_run(p) for p in sorted(found) if _is_run(p)]
    out.sort(key=lambda r: (r["started"] or "", r["run"]))
    return out


def runs_of(args: list[str], runs_dir: str | Path = "runs") -> tuple[list[Path], list[str]]:
    """The run directories among args (as a shell glob gives them), and notes on what was skipped.

    Files and folders that are not runs (a sweep's logs/ or summary.csv) are skipped when other
    arguments are runs; a path that does not exist is an error (a typo)."""
    dirs, skipped = [], []
    for arg in args:
        path = Path(arg)
        if len(args) > 1 and path.exists() and not (path.is_dir() and _is_run(path)):
            skipped.append(f"skipped {arg}: not a run directory")
        else:
            dirs.append(resolve_run(arg, runs_dir))
    if not dirs:
        raise RunError(f"none of {', '.join(args)} is a run directory. Give run directories made "
                       "by 'mnistlab train' (e.g. runs/SWEEP/*/); 'mnistlab runs' lists them.")
    return dirs, skipped


def varying_keys(rows: list[dict]) -> list[str]:
    """Config keys whose values are not the same in all rows, in config order (damaged runs without
    a config are left out of the comparison)."""
    rows = [r for r in rows if r["config"]]
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r["config"]))
    return [k for k in keys if k not in NOT_PARAMS
            and len({json.dumps(r["config"].get(k), sort_keys=True) for r in rows}) > 1]


def all_keys(rows: list[dict]) -> list[str]:
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(k for k in r["config"] if k not in NOT_PARAMS))
    return list(keys)


ROW_KEYS = ("run", "started", "status", "problem", "task", "model", *metrics.METRICS)


def value_of(row: dict, key: str):
    return row[key] if key in ROW_KEYS else row["config"].get(key)


def _known(rows: list[dict]) -> list[str]:
    return [*ROW_KEYS, "model.kind", *all_keys(rows)]


def _unknown_key(key: str, rows: list[dict], what: str) -> RunError:
    known = _known(rows)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "use a column such as test_accuracy, " \
        "status, started, or a config key such as optim.lr"
    return RunError(f"{what}: {key!r} is not a column or config key of these runs; {hint}")


def select(rows: list[dict], filters: list[str], statuses: list[str]) -> list[dict]:
    """Rows matching every key=value filter and one of the statuses (all when none given)."""
    for text in filters:
        key, sep, want = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RunError(f"--filter {text!r}: a filter is key=value, e.g. model.kind=conv")
        if rows and key not in _known(rows):
            raise _unknown_key(key, rows, "--filter")
        try:
            parsed = yaml.safe_load(want) if want.strip() else None
        except yaml.YAMLError:
            parsed = want
        rows = [r for r in rows if value_of(r, key) == parsed or str(value_of(r, key)) == want]
    if statuses:
        rows = [r for r in rows if r["status"] in statuses]
    return rows


def sort_rows(rows: list[dict], key: str, reverse: bool = False) -> list[dict]:
    """Metrics best first, everything else ascending; runs without the value go last."""
    if rows and key not in _known(rows):
        raise _unknown_key(key, rows, "--sort")
    high_first = key in metrics.METRICS and metrics.METRICS[key].higher is True
    present = [r for r in rows if value_of(r, key) is not None]
    absent = [r for r in rows if value_of(r, key) is None]
    present.sort(key=lambda r: _sortable(value_of(r, key)), reverse=high_first != reverse)
    return present + absent


def _sortable(v):
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


# ---------------------------------------------------------------- rendering


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


def rich_table(title: str, columns: list[tuple[str, str]], texts: list[list[str]],
               caption: str | None = None) -> Table:
    """A Rich table of plain texts (never markup); a cell too wide folds, it is never cut."""
    table = Table(title=title, box=box.SIMPLE_HEAD, caption=caption, title_justify="left",
                  caption_justify="left")
    for key, header in columns:
        numeric = key in metrics.METRICS
        table.add_column(header, justify="right" if numeric else "left", overflow="fold")
    for text in texts:
        table.add_row(*[Text(t, style=STATUS_STYLE.get(t, "")) if k == "status" else Text(t)
                        for (k, _), t in zip(columns, text)])
    return table


def render(title: str, columns: list[tuple[str, str]], rows: list[dict], texts: list[list[str]],
           fmt: str, out: Console, caption: str | None = None) -> None:
    """Print rows as a Rich table, CSV, Markdown or JSON; columns are (key, header) pairs."""
    if fmt == "json":
        print(json.dumps([{k: r.get(k) for k, _ in columns} for r in rows], indent=2, default=str))
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([k for k, _ in columns])
        writer.writerows([["" if r.get(k) is None else _csv(r.get(k)) for k, _ in columns]
                          for r in rows])
        print(buf.getvalue(), end="")
    elif fmt == "markdown":
        lines = ["| " + " | ".join(h for _, h in columns) + " |",
                 "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(t.replace("|", "\\|") for t in row) + " |" for row in texts]
        print("\n".join(lines))
    else:
        out.print(rich_table(title, columns, texts, caption))


def _csv(v):
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def _table_width(widths: list[int]) -> int:
    """Width of a rich_table whose columns need these widths: padding 1 each side, edges and gaps 1."""
    return sum(w + 2 for w in widths) + len(widths) + 1


def _column_widths(columns: list[tuple[str, str, float]], texts: dict[str, list[str]]) -> dict[str, int]:
    return {k: max([cell_len(h)] + [cell_len(t) for t in texts[k]]) for k, h, _ in columns}


def runs_columns(rows: list[dict], all_columns: bool) -> list[tuple[str, str, float]]:
    """(key, header, priority) of the runs table in display order; lower priority numbers are kept first.

    Name and status come first, then each task's headline metric, then the settings that differ
    among these runs, then the other metrics, times and the start time."""
    params = all_keys(rows) if all_columns else varying_keys(rows)
    shown = [m for r in rows for m in table_metrics(r["task"])]
    headline = {table_metrics(r["task"])[0] for r in rows if table_metrics(r["task"])}
    model_varies = all_columns or len({r["model"] for r in rows}) > 1
    if model_varies:  # the model column names the task of runs that are not classifiers
        params = [k for k in params if k != "task"]
    return ([("run", "run", 0), ("status", "status", 1)]
            + [("model", "model", 3)] * model_varies
            + [(k, k, 4 + i / 1000) for i, k in enumerate(params)]
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


def runs_table(rows: list[dict], fmt: str, all_columns: bool, out: Console) -> None:
    """The runs table: name, status, each task's metrics and the settings that differ, fitted to the width."""
    columns = runs_columns(rows, all_columns)
    task_metrics = {m for r in rows for m in table_metrics(r["task"])}
    # a metric of another task stays empty: no loss column filled for classifiers
    flat = [{**{k: None if k in task_metrics and k not in table_metrics(r["task"]) else value_of(r, k)
                for k, _, _ in columns}, "run_dir": str(r["dir"]), "problem": r["problem"]}
            for r in rows]
    if fmt != "table":
        extra = [("run_dir", "run_dir"), ("problem", "problem")] if fmt == "json" else []
        pairs = [(k, h) for k, h, _ in columns] + extra
        render("", pairs, flat, [[_text(k, f[k]) for k, _ in pairs] for f in flat], fmt, out)
        return
    texts = {k: ["" if k in task_metrics and k not in table_metrics(r["task"]) else _text(k, f[k])
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
    keys = all_keys(rows) if all_keys_ else varying_keys(rows)
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
        texts = [[c["key"]] + [cell(c[n]) for n in names] for c in config_rows]
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
        (str(where), "bold"), f" {result['ckpt']}.pt (epoch {result['epoch']}) on the {split} split "
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


# ---------------------------------------------------------------- plots

PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def records(run_dir: Path, event: str) -> list[dict]:
    """The run's metrics.jsonl records of one event that have a numeric epoch, step and loss.

    Lines that a kill cut short or that were damaged are skipped, as rundir.read_metrics does."""
    path = run_dir / "metrics.jsonl"
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise RunError(f"{path}: cannot be read ({e.strerror or type(e).__name__}); check its "
                       "permissions, or leave the run out.") from None
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(rec, dict) and rec.get("event") == event and all(
                _number(rec.get(k)) for k in ("epoch", "step", "loss")):
            out.append(rec)
    return out


def epoch_curves(run_dir: Path) -> dict[str, list[dict]]:
    """Per-epoch train and val records of a run (the last record of an epoch wins, for resumed runs)."""
    out: dict[str, dict[int, dict]] = {"train": {}, "val": {}}
    for rec in records(run_dir, "epoch"):
        if rec.get("split") in out:
            out[rec["split"]][rec["epoch"]] = rec
    return {split: [recs[e] for e in sorted(recs)] for split, recs in out.items()}


def legend_labels(rows: list[dict]) -> list[str]:
    """Each run named by the hyperparameters that differ (its directory name when none do)."""
    keys = varying_keys(rows)[:3]
    labels = [", ".join(f"{k}={cell(r['config'].get(k))}" for k in keys) or r["run"] for r in rows]
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({r['run']})" if keys else label for label, r in zip(labels, rows)]
    return labels


def curves_figure(rows: list[dict]):
    """Loss and accuracy per epoch, train solid and val dashed, one colour per run."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    all_curves = [epoch_curves(r["dir"]) for r in rows]
    with_accuracy = any("accuracy" in rec for c in all_curves for rec in c["train"])
    fits = {} if with_accuracy else linreg_1d(rows)
    wide = with_accuracy or bool(fits)
    fig = Figure(figsize=(10 if wide else 5.5, 4), dpi=100, layout="constrained")
    ax_loss, ax_right = fig.subplots(1, 2) if wide else (fig.subplots(), None)
    ax_acc = ax_right if with_accuracy else None
    labels = legend_labels(rows)
    if fits:
        draw_fits(ax_right, rows, labels, fits)
    drawn = 0
    for i, (row, label) in enumerate(zip(rows, labels)):
        color = f"C{i % 10}"
        curves = all_curves[i]
        if row["status"] in ("paused", "pruned"):  # a sweep stopped it at a rung
            label += f" ({row['status']} at epoch {row['epochs']})"
        for split, style in (("train", "-"), ("val", "--")):
            recs = curves[split]
            if not recs:
                continue
            epochs = [r["epoch"] for r in recs]
            ax_loss.plot(epochs, [r["loss"] for r in recs], style, color=color, marker="o",
                         markersize=3, label=label if split == "train" else None)
            if ax_acc is not None and all(_number(r.get("accuracy")) for r in recs):
                ax_acc.plot(epochs, [100 * r["accuracy"] for r in recs], style, color=color,
                            marker="o", markersize=3)
            drawn += 1
        if ax_acc is not None and row["test_accuracy"] is not None and curves["train"]:
            ax_acc.scatter([curves["train"][-1]["epoch"]], [100 * row["test_accuracy"]],
                           marker="*", s=90, color=color, zorder=3)
    if not drawn:
        raise RunError("none of the runs has finished an epoch yet, so there is nothing to plot.")
    from . import tasks

    labels = {tasks.get(r["config"].get("task")).loss_label for r in rows}
    on = sorted({task_label(r["config"])[1] for r in rows})
    fig.suptitle(f"Learning curves on {', '.join(on)}")
    ax_loss.set(title="Loss", xlabel="epoch", ylabel=labels.pop() if len(labels) == 1 else "loss")
    styles = [Line2D([], [], color="gray", ls="-", label="train"),
              Line2D([], [], color="gray", ls="--", label="validation")]
    if ax_acc is None:
        ax_loss.add_artist(ax_loss.legend(handles=styles, fontsize="small", loc="center right"))
    else:
        ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
        ax_acc.legend(handles=styles + [Line2D([], [], color="gray", ls="", marker="*", markersize=9,
                                               label="test (end of training)")],
                      fontsize="small", loc="lower right")
    log_if_wide(ax_loss)
    for ax in (ax_loss, ax_acc):
        if ax is not None:
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
    ax_loss.legend(title="run", fontsize="small")
    return fig


def log_if_wide(ax, span: float = 30) -> None:
    """A log y axis when the positive values drawn span more than a factor of span."""
    import math

    ys = [y for line in ax.lines for y in line.get_ydata() if isinstance(y, (int, float))
          and math.isfinite(y)]
    if ys and min(ys) > 0 and max(ys) / min(ys) > span:
        ax.set_yscale("log")


def metric_axis(ax, metric: str, values: list[float]) -> None:
    """Label the y axis by the metric registry; a log axis when the values span 1000x or more
    (symlog when one is exactly 0, which a log axis cannot show).

    values are in the unit the axis shows (metrics.plotted)."""
    import math

    ax.set_ylabel(metrics.axis_label(metric))
    finite = [v for v in values if v is not None and math.isfinite(v)]
    positive = [v for v in finite if v > 0]
    if any(v < 0 for v in finite) or len(positive) < 2 or max(positive) / min(positive) < 1000:
        return
    if 0 in finite:
        ax.set_yscale("symlog", linthresh=min(positive))
        ax.set_ylim(bottom=-0.3 * min(positive), top=max(positive) * 3)  # not down to -max
    else:
        ax.set_yscale("log")


def linreg_1d(rows: list[dict]) -> dict[int, tuple]:
    """For each run that recorded its one-input training points (linreg): (x, y)."""
    out = {}
    for i, row in enumerate(rows):
        points = (row["summary"].get("result") or {}).get("train_points")
        if points:
            out[i] = (points["x"], points["y"])
    return out


def task_label(config: dict) -> tuple[str, str]:
    """(model, data) of a run from its flat config: the task's name where it reads no such section."""
    from .config import UNREAD

    task = config.get("task") or "classify"
    unread = UNREAD["task"].get(task, ())
    return tuple(task if section in unread else str(config.get(f"{section}.{key}"))
                 for section, key in (("model", "kind"), ("data", "name")))


def line_equation(a: float, b: float) -> str:
    """y = ax + b as written by hand: y = 1.54x − 0.291, never + -0.291."""
    return f"y = {a:.3g}x {'−' if b < 0 else '+'} {abs(b):.3g}"


def draw_fits(ax, rows: list[dict], labels: list[str], fits: dict[int, tuple]) -> None:
    """The data of 1-input linear regressions with their fitted lines (and the true ones)."""
    for i, (x, y) in fits.items():
        result, color = rows[i]["summary"]["result"], f"C{i % 10}"
        ax.scatter(x, y, s=6, alpha=0.35, color=color)
        ends = [min(x), max(x)]
        a, b = result["A"][0][0], result["B"][0]
        ax.plot(ends, [a * e + b for e in ends], color=color, lw=2,
                label=f"fit {line_equation(a, b)}" + (f" ({labels[i]})" if len(fits) > 1 else ""))
        if "true_A" in result:
            ta, tb = result["true_A"][0][0], result["true_B"][0]
            ax.plot(ends, [ta * e + tb for e in ends], "--", color="gray",
                    label=f"true {line_equation(ta, tb)}")
    ax.set(title="Data and fitted line", xlabel="x", ylabel="y")
    ax.legend(fontsize="small")


def _same_curve(a: list[float], b: list[float]) -> bool:
    """Equal to 0.1% at every step: one line on a log axis (float32 rounding differs by more than 1e-7)."""
    import math

    return len(a) == len(b) and all(math.isclose(u, v, rel_tol=1e-3, abs_tol=1e-30)
                                    for u, v in zip(a, b))


def _flips_sign(xs: list[list[float]]) -> bool:
    """Whether x points the other way after every step (lr above 0.5 for plain SGD)."""
    dots = [d for a, b in zip(xs, xs[1:]) if (d := sum(u * v for u, v in zip(a, b)))]
    return bool(dots) and all(d < 0 for d in dots)


QUADRATIC_STYLES = (("-", None), ("--", "o"), (":", "s"), ("-.", "^"))


def quadratic_figure(rows: list[dict]):
    """f(x) and |x| against the gradient step, log scale: convergence, oscillation, divergence.

    Runs whose curves coincide are drawn dashed with markers over the first one and named in a
    note; a value that reaches exactly 0 (off a log axis) is marked at the bottom edge."""
    import math

    from matplotlib.figure import Figure

    traces = []
    for row, label in zip(rows, legend_labels(rows)):
        steps = [r for r in records(row["dir"], "step")
                 if isinstance(r.get("x"), list) and all(_number(v) for v in r["x"])]
        if steps:
            traces.append((row, label, [r["step"] for r in steps], [r["loss"] for r in steps],
                           [r["x"] for r in steps]))
    if not traces:
        raise RunError("none of the quadratic runs has logged a step (train.log_every=1 logs each).")
    fig = Figure(figsize=(11, 4.4), dpi=100, layout="constrained")
    ax_f, ax_x = fig.subplots(1, 2)
    notes = []
    for i, (row, label, steps, f, xs) in enumerate(traces):
        twins = [k for k in range(i) if steps == traces[k][2] and _same_curve(f, traces[k][3])]
        if twins:
            notes.append(f"{label} (dashed) has the same f(x) and |x| as {traces[twins[0]][1]}.")
        ls, marker = QUADRATIC_STYLES[min(len(twins), 3)]
        norms = [math.sqrt(sum(v * v for v in x)) for x in xs]
        if row["status"] != "completed":
            label += f" ({row['status']})"
        zero = next((s for s, v in zip(steps, f) if v == 0), None)
        if zero is not None:
            label += f" (f = 0 from step {zero})"
        color = f"C{i % 10}"
        for ax, ys in ((ax_f, f), (ax_x, norms)):
            ys = [v if v > 0 else math.nan for v in ys]
            ax.plot(steps, ys, ls=ls, marker=marker, markevery=max(len(steps) // 12, 1),
                    markersize=5, fillstyle="none", color=color, label=label if ax is ax_f else None)
            if zero is not None:  # 0 has no place on a log axis: a triangle on the bottom edge
                ax.plot([zero], [0], "v", color=color, markersize=9, clip_on=False,
                        transform=ax.get_xaxis_transform())
            if row["status"] == "failed":
                ax.plot(steps[-1:], ys[-1:], "X", color=color, markersize=8)
    ax_f.set(title="Loss", xlabel="gradient step", ylabel="f(x)", yscale="log")
    ax_x.set(title="Distance to the minimum", xlabel="gradient step", ylabel="|x|", yscale="log")
    for ax in (ax_f, ax_x):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.legend(handles=[line for line in ax_f.lines if not line.get_label().startswith("_")],
               title="run (X: failed)" if any(t[0]["status"] == "failed" for t in traces) else "run",
               loc="outside right upper", fontsize="small")
    flips = [t[1] for t in traces if _flips_sign(t[4])]
    if flips:  # what |x| cannot show
        notes.append(f"x changes sign at every step for {', '.join(flips)}.")
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize="small", va="bottom")
        fig.get_layout_engine().set(rect=(0, 0.04 * len(notes) + 0.02, 1, 1 - 0.04 * len(notes) - 0.02))
    fig.suptitle("Gradient descent on f(x) = sum(x²)")
    return fig


def confusion_figure(result: dict):
    """The confusion matrix of an eval result: colour is the share of the true class, text the count."""
    from matplotlib.figure import Figure

    conf = result["confusion"]
    names = result["class_names"]
    k = len(names)
    shares = [[v / max(sum(row), 1) * 100 for v in row] for row in conf]
    size = max(4.5, 0.55 * k + 2.5)
    fig = Figure(figsize=(size + 1, size), dpi=100, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=100)
    for t in range(k):
        for p in range(k):
            if conf[t][p]:
                ax.text(p, t, str(conf[t][p]), ha="center", va="center", fontsize=8,
                        color="white" if shares[t][p] > 60 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"Confusion matrix: {Path(result['run_dir'] or result['checkpoint']).name}\n"
                 f"{result['split']} split, {result['ckpt']}.pt, accuracy {metrics.percent(result['accuracy'])}")
    fig.colorbar(image, ax=ax, label="% of the true class", shrink=0.8)
    return fig


def save_figure(fig, path: Path) -> None:
    """PNG, SVG or PDF by the file's extension, written atomically."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise RunError(f"{path}: unknown figure format {path.suffix or '(no extension)'!r}; "
                       "end the file name in .png, .svg or .pdf.")
    if not path.parent.is_dir():
        raise RunError(f"{path}: the directory {path.parent} does not exist; create it first.")
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lower()[1:])
    files.atomic_write_bytes(path, buf.getvalue())
