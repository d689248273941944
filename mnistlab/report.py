"""Look at what was trained: the runs table, side-by-side comparison, evaluation tables and plots."""

from __future__ import annotations

import csv
import difflib
import io
import json
import sys
from datetime import datetime
from pathlib import Path

import yaml
from rich import box
from rich.console import Console
from rich.table import Table

from . import runs
from .config import flatten
from .errors import RunError
from .display import _pct as pct

FORMATS = ("table", "csv", "markdown", "json")
STATUS_STYLE = {"completed": "green", "running": "cyan", "interrupted": "yellow", "failed": "red",
                "killed": "red", "paused": "yellow", "pruned": "magenta"}
# keys every run has but that are not hyperparameters
NOT_PARAMS = ("name", "runs_dir", "model.kind")


def console() -> Console:
    """Rich console; off a terminal, wide enough that tables are never cut or wrapped."""
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(highlight=False, width=400, soft_wrap=True)


# ---------------------------------------------------------------- reading runs


def resolve_run(arg: str | Path, runs_dir: str | Path = "runs") -> Path:
    """A run directory given as a path, or by its name inside runs/."""
    path = Path(arg)
    if not path.exists() and not path.is_absolute() and (Path(runs_dir) / path).is_dir():
        path = Path(runs_dir) / path
    if not path.is_dir():
        raise RunError(f"{arg}: no such run directory. Give the path of a run made by "
                       "'mnistlab train'; 'mnistlab runs' lists them.")
    if not (path / "summary.json").is_file():
        raise RunError(f"{path}: is not a run directory (it has no summary.json). Give the path "
                       "of a run made by 'mnistlab train'; 'mnistlab runs' lists them.")
    return path


def load_run(path: Path) -> dict:
    """Summary, flat config and shown metrics of one run directory."""
    try:
        summary = runs.read_json(path / "summary.json")
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as e:
        raise RunError(f"{path}: its summary.json or config.yaml cannot be read "
                       f"({type(e).__name__}); the run directory is damaged.") from None
    if not isinstance(summary, dict) or not isinstance(config, dict):
        raise RunError(f"{path}: its summary.json or config.yaml is not a mapping; "
                       "the run directory is damaged.")
    final, best = summary.get("final") or {}, summary.get("best") or {}
    test = final.get("test") or {}
    return {
        "dir": path, "run": path.name, "config": flatten(config), "summary": summary,
        "model": (config.get("model") or {}).get("kind") if config.get("task", "classify") == "classify"
        else config.get("task"),
        "started": summary.get("started"), "status": runs.run_status(summary),
        "val.accuracy": best.get("val_accuracy"), "best.epoch": best.get("epoch"),
        "test.accuracy": test.get("accuracy"), "test.loss": test.get("loss"),
        "loss": (final.get("val") or final.get("train") or {}).get("loss"),
        "epochs": summary.get("epochs_completed"), "params": summary.get("params"),
        "wall_seconds": summary.get("wall_seconds"),
    }


def find_runs(runs_dir: Path) -> list[dict]:
    """Every run under runs_dir (a run directory itself counts), oldest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise RunError(f"{runs_dir}: no such directory. Give the directory that holds your runs "
                       "(runs_dir in the config, 'runs' by default).")
    found = sorted({p.parent for p in runs_dir.rglob("summary.json")
                    if (p.parent / "config.yaml").is_file()})
    out = [load_run(p) for p in found]
    out.sort(key=lambda r: (r["started"] or "", r["run"]))
    return out


def varying_keys(rows: list[dict]) -> list[str]:
    """Config keys whose values are not the same in all rows, in config order."""
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


def value_of(row: dict, key: str):
    return row[key] if key in row and key not in ("config", "summary", "dir") else row["config"].get(key)


def _known(rows: list[dict]) -> list[str]:
    return ["run", "started", "status", "model", "val.accuracy", "test.accuracy", "test.loss",
            "loss", "epochs", "params", "wall_seconds", "model.kind"] + all_keys(rows)


def _unknown_key(key: str, rows: list[dict], what: str) -> RunError:
    known = _known(rows)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "use a column such as test.accuracy, " \
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
        parsed = yaml.safe_load(want) if want.strip() else None
        rows = [r for r in rows if value_of(r, key) == parsed or str(value_of(r, key)) == want]
    if statuses:
        rows = [r for r in rows if r["status"] in statuses]
    return rows


def sort_rows(rows: list[dict], key: str, reverse: bool = False) -> list[dict]:
    """Accuracies best first, everything else ascending; runs without the value go last."""
    if rows and key not in _known(rows):
        raise _unknown_key(key, rows, "--sort")
    high_first = key.endswith("accuracy")
    present = [r for r in rows if value_of(r, key) is not None]
    absent = [r for r in rows if value_of(r, key) is None]
    present.sort(key=lambda r: _sortable(value_of(r, key)), reverse=high_first != reverse)
    return present + absent


def _sortable(v):
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


# ---------------------------------------------------------------- rendering


def seconds(x) -> str:
    if x is None:
        return "-"
    return f"{x:.1f}s" if x < 60 else f"{int(x // 60)}m{int(x % 60):02d}s"


def cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "[" + ", ".join(str(i) for i in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


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
        table = Table(title=title, box=box.SIMPLE_HEAD, caption=caption, title_justify="left",
                      caption_justify="left")
        for key, header in columns:
            numeric = key.endswith(("accuracy", "loss", "seconds", "params", "epochs"))
            table.add_column(header, justify="right" if numeric else "left", no_wrap=True)
        for row, text in zip(rows, texts):
            styled = [f"[{STATUS_STYLE[t]}]{t}[/]" if k == "status" and t in STATUS_STYLE else
                      t.replace("[", "\\[") for (k, _), t in zip(columns, text)]
            table.add_row(*styled)
        out.print(table)


def _csv(v):
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def runs_table(rows: list[dict], fmt: str, all_columns: bool, out: Console) -> None:
    """The runs table: hyperparameters that differ (all with all_columns) and the key metrics."""
    params = all_keys(rows) if all_columns else varying_keys(rows)
    columns = ([("run", "run"), ("started", "started"), ("status", "status"),
                ("model", "model")] + [(k, k) for k in params]
               + [("val.accuracy", "best val acc"), ("test.accuracy", "test acc")]
               # quadratic and linreg runs have no accuracy: show their final (val) loss
               + [("loss", "final loss")] * any(r["model"] in ("quadratic", "linreg") for r in rows)
               + [("wall_seconds", "wall time")])
    flat = [{**{k: value_of(r, k) for k, _ in columns}, "run_dir": str(r["dir"])} for r in rows]
    texts = [[_text(k, v[k]) for k, _ in columns] for v in flat]
    hidden = len(all_keys(rows)) - len(params)
    caption = None
    if hidden and fmt == "table":
        caption = f"{hidden} settings with the same value in every run are hidden; --all-columns shows them."
    if fmt == "json":
        columns = columns + [("run_dir", "run_dir")]
    render(f"{len(rows)} runs", columns, flat, texts, fmt, out, caption)


def _text(key: str, v) -> str:
    if key.endswith("accuracy"):
        return pct(v)
    if key.endswith("seconds"):
        return seconds(v)
    if key == "started" and v:
        try:
            return datetime.fromisoformat(v).strftime("%Y-%m-%d %H:%M")
        except ValueError:
            return str(v)
    if key.endswith("loss") and v is not None:
        return f"{v:.4f}" if v >= 1e-3 else f"{v:.2g}"
    if key == "params" and v is not None:
        return f"{v:,}"
    return cell(v)


COMPARE_METRICS = [
    ("status", "status"), ("epochs", "epochs completed"), ("params", "parameters"),
    ("final.train.loss", "train loss"), ("final.train.accuracy", "train accuracy"),
    ("final.val.loss", "val loss"), ("final.val.accuracy", "val accuracy"),
    ("val.accuracy", "best val accuracy"), ("best.epoch", "best epoch"),
    ("test.loss", "test loss"), ("test.accuracy", "test accuracy"),
    ("train_seconds", "train time"), ("wall_seconds", "wall time"),
]


def compare(rows: list[dict], fmt: str, all_keys_: bool, out: Console) -> None:
    """Config differences and metrics of a few runs, side by side (one column per run)."""
    names = [r["run"] for r in rows]
    keys = all_keys(rows) if all_keys_ else varying_keys(rows)
    if len({r["run"] for r in rows}) < len(rows):
        names = [str(r["dir"]) for r in rows]
    config_rows = [{"key": k, **{n: r["config"].get(k) for n, r in zip(names, rows)}} for k in keys]
    metric_rows = []
    for key, label in COMPARE_METRICS:
        values = [_metric(r, key) for r in rows]
        metric_rows.append({"key": label, **dict(zip(names, values))})
        metric_rows[-1]["_text"] = [_text(key, v) for v in values]
    evals = sorted({p.stem for r in rows for p in (r["dir"] / "evals").glob("*.json")})
    for name in evals:
        values = []
        for r in rows:
            try:
                values.append(runs.read_json(r["dir"] / "evals" / f"{name}.json").get("accuracy"))
            except (OSError, json.JSONDecodeError):
                values.append(None)
        metric_rows.append({"key": f"eval {name} accuracy", **dict(zip(names, values)),
                            "_text": [pct(v) for v in values]})
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


def _metric(row: dict, key: str):
    if key.startswith("final."):
        _, split, what = key.split(".")
        return ((row["summary"].get("final") or {}).get(split) or {}).get(what)
    if key == "train_seconds":
        return row["summary"].get("train_seconds")
    return row[key]


def eval_tables(result: dict, out: Console) -> None:
    """Summary line, per-class accuracy, confusion matrix and most confused pairs of an eval."""
    where = result["run_dir"] or result["checkpoint"]
    out.print(f"[bold]{where}[/] {result['ckpt']}.pt (epoch {result['epoch']}) on the "
              f"{result['split']} split of {result['dataset']}: {result['n']} images, "
              f"loss {result['loss']:.4f}, accuracy [bold]{pct(result['accuracy'])}[/]")
    names = result["class_names"]
    per = Table(title="per-class accuracy", box=box.SIMPLE_HEAD, title_justify="left")
    for header, justify in (("class", "right"), ("name", "left"), ("images", "right"),
                            ("correct", "right"), ("accuracy", "right")):
        per.add_column(header, justify=justify)
    for c in result["per_class"]:
        per.add_row(str(c["class"]), c["name"], str(c["n"]), str(c["correct"]), pct(c["accuracy"]))
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
            mc.add_row(c["true_name"], c["predicted_name"], str(c["count"]), pct(c["share"]))
        out.print(mc)
    if result["saved"]:
        out.print(f"saved {result['saved']}")


# ---------------------------------------------------------------- plots

PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def epoch_curves(run_dir: Path) -> dict[str, list[dict]]:
    """Per-epoch train and val records of a run (the last record of an epoch wins, for resumed runs)."""
    path = run_dir / "metrics.jsonl"
    records = runs.read_metrics(path) if path.is_file() else []
    out: dict[str, dict[int, dict]] = {"train": {}, "val": {}}
    for rec in records:
        if rec.get("event") == "epoch" and rec.get("split") in out:
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
            if ax_acc is not None and all("accuracy" in r for r in recs):
                ax_acc.plot(epochs, [100 * r["accuracy"] for r in recs], style, color=color,
                            marker="o", markersize=3)
            drawn += 1
        if ax_acc is not None and row["test.accuracy"] is not None and curves["train"]:
            ax_acc.scatter([curves["train"][-1]["epoch"]], [100 * row["test.accuracy"]],
                           marker="*", s=90, color=color, zorder=3)
    if not drawn:
        raise RunError("none of the runs has finished an epoch yet, so there is nothing to plot.")
    tasks = {r["config"].get("task", "classify") for r in rows}
    on = sorted({str(r["config"].get("data.name")) if r["config"].get("task", "classify") == "classify"
                 else r["config"]["task"] for r in rows})
    fig.suptitle(f"Learning curves on {', '.join(on)}")
    ax_loss.set(title="Loss", xlabel="epoch",
                ylabel={"classify": "cross-entropy loss", "linreg": "mean squared error"}.get(
                    tasks.pop() if len(tasks) == 1 else None, "loss"))
    styles = [Line2D([], [], color="gray", ls="-", label="train"),
              Line2D([], [], color="gray", ls="--", label="validation")]
    if ax_acc is None:
        ax_loss.add_artist(ax_loss.legend(handles=styles, fontsize="small", loc="center right"))
    else:
        ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
        ax_acc.legend(handles=styles + [Line2D([], [], color="gray", ls="", marker="*", markersize=9,
                                               label="test (end of training)")],
                      fontsize="small", loc="lower right")
    for ax in (ax_loss, ax_acc):
        if ax is not None:
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
    ax_loss.legend(title="run", fontsize="small")
    return fig


def linreg_1d(rows: list[dict]) -> dict[int, tuple]:
    """For each linreg run with one input and one output: its training data (x, y)."""
    from .config import config_from_dict
    from .tasks import linreg_data

    out = {}
    for i, row in enumerate(rows):
        if row["config"].get("task") != "linreg" or not (row["summary"].get("result") or {}):
            continue
        cfg = config_from_dict(yaml.safe_load((row["dir"] / "config.yaml").read_text()))
        data, _ = linreg_data(cfg)
        if data.train_x.shape[1] == 1 and data.train_y.shape[1] == 1:
            out[i] = (data.train_x[:, 0].tolist(), data.train_y[:, 0].tolist())
    return out


def draw_fits(ax, rows: list[dict], labels: list[str], fits: dict[int, tuple]) -> None:
    """The data of 1-input linear regressions with their fitted lines (and the true ones)."""
    for i, (x, y) in fits.items():
        result, color = rows[i]["summary"]["result"], f"C{i % 10}"
        ax.scatter(x, y, s=6, alpha=0.35, color=color)
        ends = [min(x), max(x)]
        a, b = result["A"][0][0], result["B"][0]
        ax.plot(ends, [a * e + b for e in ends], color=color, lw=2,
                label=f"fit y = {a:.3g}x + {b:.3g}" + (f" ({labels[i]})" if len(fits) > 1 else ""))
        if "true_A" in result:
            ta, tb = result["true_A"][0][0], result["true_B"][0]
            ax.plot(ends, [ta * e + tb for e in ends], "--", color="gray",
                    label=f"true y = {ta:.3g}x + {tb:.3g}")
    ax.set(title="Data and fitted line", xlabel="x", ylabel="y")
    ax.legend(fontsize="small")


def quadratic_figure(rows: list[dict]):
    """f(x) and |x| against the gradient step, log scale: convergence, oscillation, divergence."""
    import math

    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    ax_f, ax_x = fig.subplots(1, 2)
    for i, (row, label) in enumerate(zip(rows, legend_labels(rows))):
        steps = [r for r in runs.read_metrics(row["dir"] / "metrics.jsonl")
                 if r.get("event") == "step" and "x" in r]
        if row["status"] != "completed":
            label += f" ({row['status']})"
        xs = [r["step"] for r in steps]
        ax_f.plot(xs, [r["loss"] for r in steps], color=f"C{i % 10}", label=label)
        ax_x.plot(xs, [math.sqrt(sum(v * v for v in r["x"])) for r in steps], color=f"C{i % 10}")
    if not ax_f.lines:
        raise RunError("none of the quadratic runs has logged a step (train.log_every=1 logs each).")
    ax_f.set(title="f(x) = sum(x²)", xlabel="gradient step", ylabel="f(x)", yscale="log")
    ax_x.set(title="Distance to the minimum", xlabel="gradient step", ylabel="|x|", yscale="log")
    for ax in (ax_f, ax_x):
        ax.grid(alpha=0.3)
    ax_f.legend(title="run", fontsize="small")
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
                 f"{result['split']} split, {result['ckpt']}.pt, accuracy {pct(result['accuracy'])}")
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
    runs.atomic_write_bytes(path, buf.getvalue())
