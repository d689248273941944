"""Thin Typer commands: parse, load the config, call one function, turn user errors into exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from .config import ConfigError, load_config, to_yaml
from .data import DataError
from .runs import CheckpointError

app = typer.Typer(
    help="Train, sweep and evaluate dense and convolutional networks on the MNIST family.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

USER_ERRORS = (ConfigError, DataError, CheckpointError)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-paragraph error on stderr and return the Exit to raise."""
    err.print(f"[bold red]error:[/] {message}", markup=True)
    return typer.Exit(code)


def user_error(e: Exception) -> typer.Exit:
    if isinstance(e, ConfigError):
        if len(e.problems) == 1:
            return fail(f"config: {e.problems[0]}")
        lines = "\n".join(f"  - {p}" for p in e.problems)
        return fail(f"the config has {len(e.problems)} problems:\n{lines}")
    return fail(str(e))


OVERRIDES = typer.Argument(None, help="key=value overrides, e.g. optim.lr=0.01 train.epochs=3",
                           show_default=False)


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="YAML config, e.g. configs/cnn.yaml",
                                            show_default=False),
    overrides: Optional[List[str]] = OVERRIDES,
    print_config: bool = typer.Option(False, "--print-config",
                                      help="Show the fully resolved config and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the final summary."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_DIR",
                                          help="Continue an interrupted run from its last.pt."),
) -> None:
    """Train the model a YAML config describes; write the run into runs/."""
    from . import display
    from .train import Interrupted, TrainError, fit, resume_config

    overrides = overrides or []
    try:
        if resume is not None:
            if config is not None or overrides:
                raise fail("--resume continues a run with the config it was started with; "
                           "give only the run directory: mnistlab train --resume RUN_DIR")
            cfg = resume_config(resume)
        elif config is None:
            raise fail("give a config file, e.g. mnistlab train configs/cnn.yaml "
                       "(or --resume RUN_DIR)")
        else:
            cfg = load_config(config, overrides)
        if print_config:
            typer.echo(to_yaml(cfg), nl=False)
            return
        fit(cfg, display.reporter(quiet), resume=resume,
            source={"config": str(config) if config else None, "overrides": overrides})
    except USER_ERRORS as e:
        raise user_error(e) from None
    except TrainError as e:
        raise fail(str(e), 1) from None
    except Interrupted as e:
        raise fail(f"interrupted; the last checkpoint is saved. Continue with: "
                   f"mnistlab train --resume {e.run_dir}", 130) from None
    except KeyboardInterrupt:
        raise fail("interrupted before the run started; nothing was written.", 130) from None


@app.callback()
def _root() -> None:
    """Train, sweep and evaluate dense and convolutional networks on the MNIST family."""


def main() -> None:
    app()
