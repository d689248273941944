"""mnistlab: experiments on the MNIST family from YAML configs.

In a notebook: mnistlab.train(config, overrides), mnistlab.load_runs(dir), mnistlab.evaluate(run).
"""

__version__ = "0.1.0"


def train(config, overrides=(), quiet=True, resume=None):
    """Train a config (YAML file or mapping) with overrides (["optim.lr=0.01"] or {"optim.lr": 0.01}).

    Quiet by default (the final summary line only); quiet=False prints a line per epoch. Returns
    the run's summary as a dict, with .model (the trained model) and .history (per-epoch metrics
    as Keras's History.history); see mnistlab.api.train.
    """
    from .api import train as _train  # imported on use: `import mnistlab` stays light

    return _train(config, overrides, quiet, resume)


def load_runs(runs_dir="runs"):
    """Every run under runs_dir, one row each (a pandas DataFrame when pandas is installed)."""
    from .api import load_runs as _load_runs

    return _load_runs(runs_dir)


def evaluate(run, split="test", ckpt=None, overrides=(), save=True):
    """Score a run directory, checkpoint or train()'s summary on one split; return the result."""
    from .api import evaluate as _evaluate

    return _evaluate(run, split, ckpt, overrides, save)
