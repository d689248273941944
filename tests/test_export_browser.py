"""What `mnistlab export` wrote, opened as a user opens it: TensorBoard and MLflow's UI served on
this machine, read in a real browser (Debian's chromium, headless, driven by Selenium).

Without chromium, chromedriver or selenium the tests are skipped; when CI is set they fail."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_export import SWEEP, cli, summary, trials

# Debian's packages chromium and chromium-driver (.ci/run installs them)
CHROMIUM = ("chromium", "/usr/bin/chromium")
CHROMEDRIVER = ("chromedriver", "/usr/bin/chromedriver")
START = 120  # seconds a server may take to answer, on a loaded machine
SHOW = 60  # seconds a page may take to show what is looked for

# the text a user sees: every text node, inside shadow roots and iframes, but no style or script
VISIBLE_TEXT = """
const out = [];
function walk(node) {
  if (node.nodeType === Node.TEXT_NODE) { out.push(node.textContent); return; }
  if (['STYLE', 'SCRIPT', 'TEMPLATE', 'NOSCRIPT'].includes(node.tagName)) return;
  if (node.shadowRoot) walk(node.shadowRoot);
  if (node.tagName === 'IFRAME') { try { walk(node.contentDocument); } catch (e) {} }
  for (const child of node.childNodes) walk(child);
}
walk(document);
return out.join(' ');
"""


# find(node, test): the first node for which test holds, inside shadow roots and iframes too
FIND = """
function find(node, test) {
  if (test(node)) return node;
  const inner = [node.shadowRoot, node.tagName === 'IFRAME' ? node.contentDocument : null,
                 ...node.childNodes];
  for (const child of inner) {
    const found = child && find(child, test);
    if (found) return found;
  }
  return null;
}
"""

# click the element whose own text is arguments[0], in any case; false when there is none
CLICK = FIND + """
const want = arguments[0].toLowerCase();
const found = find(document, node => node.nodeType === Node.ELEMENT_NODE && [...node.childNodes]
  .some(c => c.nodeType === Node.TEXT_NODE && c.textContent.trim().toLowerCase() === want));
if (found) found.click();
return Boolean(found);
"""

# the parallel coordinates plot of the HParams dashboard: its width on screen, and its lines
PARALLEL = FIND + """
const plot = find(document, node => node.tagName === 'TF-HPARAMS-PARALLEL-COORDS-PLOT');
const lines = plot?.shadowRoot?.querySelector('g.foreground');
return lines ? [lines.getBoundingClientRect().width, lines.querySelectorAll('path').length] : null;
"""


def missing(what: str, problem: str):
    """Skipped on a machine without the browser; a failure in CI, which installs it."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI: {problem}")
    pytest.skip(f"{what}: {problem}")


def which(names: tuple[str, str]) -> str:
    found = shutil.which(names[0]) or (names[1] if Path(names[1]).is_file() else None)
    if found is None:
        missing(names[0], "apt-get install chromium chromium-driver")
    return found


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ModuleNotFoundError:
        missing("selenium", 'pip install -e ".[test]"')
    options = webdriver.ChromeOptions()
    options.binary_location = which(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1600,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(which(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server started as a subprocess on a free port of 127.0.0.1; stop() ends it and what it
    started."""

    def __init__(self, command: list[str], health: str, log: Path):
        self.name, self.health, self.log = command[2], health, log
        self.port = free_port()
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [*command, "--host", "127.0.0.1", "--port", str(self.port)], stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)

    def address(self) -> str:
        """Its address, once GET health answers 200 (within START seconds)."""
        address = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + START
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(address + self.health, timeout=5) as answer:
                    if answer.status == 200:
                        return address
            except OSError:
                time.sleep(0.25)
        what = f"ended with {self.process.returncode}" if self.process.poll() is not None else \
            f"did not answer within {START} s"
        pytest.fail(f"{self.name} {what}:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def servers(swept_runs, tmp_path_factory) -> dict[str, Server]:
    """The runs exported to TensorBoard and to MLflow, and each tool's server on them, both
    started at once (each takes seconds to start)."""
    root = tmp_path_factory.mktemp("servers")
    tb, db = root / "tb", root / "mlflow.db"
    for tool, to in (("tensorboard", tb), ("mlflow", db)):
        exported = cli("export", tool, swept_runs, "--to", to)
        assert exported.exit_code == 0, exported.output
    started = {}
    try:
        started["tensorboard"] = Server([sys.executable, "-m", "tensorboard.main", "--logdir",
                                         str(tb)], "/data/plugins_listing", root / "tb.log")
        started["mlflow"] = Server([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                                    f"sqlite:///{db}", "--workers", "1"], "/health",
                                   root / "mlflow.log")
        started["mlflow"].db = db
        yield started
    finally:
        for server in started.values():
            server.stop()


def shows(driver, *texts: str) -> str:
    """The page's visible text once it holds every one of texts (within SHOW seconds)."""
    deadline = time.monotonic() + SHOW
    while True:
        seen = " ".join(driver.execute_script(VISIBLE_TEXT).split())
        if all(t in seen for t in texts):
            return seen
        if time.monotonic() > deadline:
            absent = [t for t in texts if t not in seen]
            pytest.fail(f"the page never showed {absent}; it showed: {seen[:3000]}")
        time.sleep(0.25)


def js_number(x: float) -> str:
    """A number as JavaScript prints it: the shortest text that reads back, 1 for 1.0."""
    return str(int(x)) if x.is_integer() else repr(x)


def tensorboard_number(x: float) -> str:
    """A number as the HParams table prints it: five significant digits, as toPrecision(5)."""
    return f"{x:#.5g}"


def test_tensorboard_hparams_lists_the_runs_with_their_lr_and_accuracy(swept_runs, servers,
                                                                       browser):
    browser.get(f"{servers['tensorboard'].address()}/#hparams")
    want = []
    for lr, run in trials(swept_runs).items():
        accuracy = summary(run)["final"]["val"]["accuracy"]
        want += [f"{SWEEP}/{run.name}", tensorboard_number(lr), tensorboard_number(accuracy)]
    seen = shows(browser, "TABLE VIEW", "optim.lr", "val.accuracy", *want)
    assert "Number of matching session groups: 3" in seen  # the quadratic run too
    assert browser.execute_script(PARALLEL)[0] == 0  # drawn, but hidden behind the table
    assert browser.execute_script(CLICK, "parallel coordinates view")
    deadline = time.monotonic() + SHOW
    while (plot := browser.execute_script(PARALLEL))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.25)
    # shown, a line through the axes for each classifier (the quadratic run has no accuracy)
    width, lines = plot
    assert width > 0 and lines == 2


def test_mlflow_ui_lists_the_runs_and_a_run_shows_its_metrics_and_settings(swept_runs, servers,
                                                                          browser):
    from mlflow import MlflowClient
    from selenium.webdriver.common.by import By

    client = MlflowClient(tracking_uri=f"sqlite:///{servers['mlflow'].db}")
    sweep = client.get_experiment_by_name(SWEEP).experiment_id
    # the Model training view of the experiment (MLflow 3 opens on GenAI traces otherwise)
    browser.get(f"{servers['mlflow'].address()}/#/experiments/{sweep}?workflowType=machine_learning")
    names = {lr: run.name for lr, run in trials(swept_runs).items()}
    shows(browser, SWEEP, "2 matching runs", *names.values())
    browser.find_element(By.LINK_TEXT, names[0.01]).click()
    test_accuracy = summary(trials(swept_runs)[0.01])["final"]["test"]["accuracy"]
    shows(browser, "val_accuracy", f"test_accuracy {js_number(test_accuracy)}", "optim.lr 0.01",
          "status : completed")
