"""The SLURM and Ray executors against the real engines: a one-node SLURM cluster, a local Ray instance.

SLURM tests need the cluster of scripts/slurm-local.sh; when CI is set they fail without it.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config_dict, write_dataset

from mnistlab.errors import ConfigError, ExecutorUnavailable
from mnistlab.sweep.executors import TrialSpec, create_executor, executor_class

ROOT = Path(__file__).resolve().parent.parent
START_SLURM = ROOT / "scripts" / "slurm-local.sh"


def slurm_problem() -> str | None:
    """Why SLURM cannot run jobs here, or None when it can."""
    try:
        import submitit  # noqa: F401
    except ModuleNotFoundError:
        return 'submitit is not installed (pip install -e ".[slurm]")'
    if not shutil.which("sbatch"):
        return "sbatch not found (apt-get install slurm-wlm munge, then bash scripts/slurm-local.sh)"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=60)
    if "UP" not in ping.stdout:
        return f"the SLURM controller does not answer ({(ping.stdout + ping.stderr).strip()})"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local one-node cluster, started once per session when this machine can (root, slurm-wlm)."""
    problem = slurm_problem()
    if problem and os.geteuid() == 0 and shutil.which("slurmctld"):
        subprocess.run(["bash", str(START_SLURM)], capture_output=True, timeout=300)
        problem = slurm_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"SLURM is required in CI: {problem}")
        pytest.skip(f"no SLURM cluster: {problem}")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance for this module; drivers in subprocesses reach it through RAY_ADDRESS."""
    try:
        import ray
    except ModuleNotFoundError:
        if os.environ.get("CI"):
            pytest.fail('Ray is required in CI: pip install -e ".[test]"')
        pytest.skip('ray is not installed (pip install -e ".[ray]")')
    for attempt in range(3):  # a loaded machine can miss Ray's own start-up deadline
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    before = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    yield os.environ["RAY_ADDRESS"]
    ray.shutdown()
    if before is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = before


@pytest.fixture(params=["slurm", "ray"])
def engine(request):
    """Each test once per engine, with the engine up."""
    request.getfixturevalue("slurm_cluster" if request.param == "slurm" else "ray_cluster")
    return request.param


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Enough synthetic images for a trial that trains a second or two: 64 steps an epoch."""
    return write_dataset(tmp_path_factory.mktemp("data"), n_train=2048, n_test=64)


# a trial signalled after 20 steps must still be running when the signal lands: at about 0.25 s
# per tiny epoch, 4 epochs could end first (a Ray cancel takes longer); 40 last about 10 s
LONG = 40


def trial(data_dir: Path, sweep_dir: Path, name: str, epochs: int) -> TrialSpec:
    """A tiny conv-net trial writing into sweep_dir/name, as the sweep runner would make it."""
    run_dir = sweep_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    config = sweep_dir.parent / f"{sweep_dir.name}-{name}.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(
        data_dir, sweep_dir, name=name, train={"epochs": epochs, "log_every": 1,
                                               # auto times fp32 against bf16 on a bf16 CPU: under
                                               # load two processes may choose differently
                                               "precision": "fp32"})))
    argv = [sys.executable, "-m", "mnistlab", "train", "--quiet", "--run-dir", str(run_dir),
            str(config)]
    return TrialSpec(key=name, name=name, argv=argv, run_dir=run_dir, log=run_dir / "trial.log",
                     threads=1, env={})


def wait_finished(executor, ids: list[str], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(s == "finished" for s in executor.states(ids).values()):
            return
        time.sleep(0.3)
    raise AssertionError(f"jobs {ids} still not finished after {timeout}s: {executor.states(ids)}")


def wait_steps(run_dir: Path, steps: int, timeout: float = 600) -> None:
    """Until the trial has logged at least this many steps (it is training, not starting up)."""
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().count('"step"') >= steps:
            return
        time.sleep(0.05)
    raise AssertionError(f"{run_dir} logged fewer than {steps} steps in {timeout}s")


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_trials_run_and_record_their_executor_and_job_id(tmp_path, data_dir, engine):
    executor = create_executor(engine, {}, 2)
    try:
        specs = [trial(data_dir, tmp_path / "sweep", f"t{i}", epochs=1) for i in range(2)]
        ids = executor.submit(specs)
        assert len(set(ids)) == 2
        wait_finished(executor, ids)
    finally:
        executor.close()
    for spec, job_id in zip(specs, ids):
        done = summary(spec.run_dir)
        assert done["status"] == "completed", spec.log.read_text()
        assert {k: done["executor"][k] for k in ("name", "job_id")} == {"name": engine, "job_id": job_id}
        assert ("forked_from" in done["executor"]) == (engine == "ray")  # a warm Ray worker
        assert not (spec.run_dir / "owner.json").exists()  # the lease ends with the trial
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == [".slurm", "t0", "t1"][
        engine != "slurm":]  # submitit's own files stay in a dot-folder, apart from the runs


def test_ray_workers_keep_a_warm_process_for_their_later_trials(tmp_path, data_dir, ray_cluster):
    executor = create_executor("ray", {}, 1)
    try:
        specs = [trial(data_dir, tmp_path / "sweep", f"t{i}", epochs=1) for i in range(4)]
        ids = executor.submit(specs)
        wait_finished(executor, ids)
    finally:
        executor.close()
    done = [summary(spec.run_dir) for spec in specs]
    assert [d["status"] for d in done] == ["completed"] * 4
    # one trial at a time on a 2-CPU Ray: at most two workers, each forking from its warm process
    assert len({d["executor"]["forked_from"] for d in done}) <= 2
    assert len({d["pid"] for d in done}) == 4


def test_a_trial_stopped_with_sigterm_resumes_to_the_exact_metrics(tmp_path, data_dir, engine):
    epochs = LONG
    reference = trial(data_dir, tmp_path / "reference", "t", epochs)
    local = subprocess.Popen(reference.argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    executor = create_executor(engine, {}, 2)
    try:
        spec = trial(data_dir, tmp_path / "sweep", "t", epochs)
        [job_id] = executor.submit([spec])
        wait_steps(spec.run_dir, 20)
        if engine == "slurm":  # what preemption and the time limit do
            subprocess.run(["scancel", "--signal=TERM", job_id], check=True)
        else:
            executor.cancel([job_id])
        wait_finished(executor, [job_id])
        stopped = summary(spec.run_dir)
        assert stopped["status"] == "interrupted", spec.log.read_text()
        assert stopped["epochs_completed"] < epochs
        [again] = executor.submit([spec])  # the same command: continues from last.pt
        wait_finished(executor, [again])
    finally:
        executor.close()
    assert local.wait() == 0
    resumed, straight = summary(spec.run_dir), summary(reference.run_dir)
    assert resumed["status"] == "completed", spec.log.read_text()
    assert resumed["executor"]["job_id"] == again
    assert resumed["final"] == straight["final"] and resumed["best"] == straight["best"]


def test_slurm_time_limit_warning_requeues_the_trial_which_continues(tmp_path, data_dir, slurm_cluster):
    epochs = LONG
    executor = create_executor("slurm", {}, 1)
    spec = trial(data_dir, tmp_path / "sweep", "t", epochs)
    [job_id] = executor.submit([spec])
    wait_steps(spec.run_dir, 20)
    # USR2 is the warning submitit asks SLURM for before the time limit (--signal=USR2@90)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    deadline = time.monotonic() + 120
    while executor.states([job_id])[job_id] != "pending" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert executor.states([job_id])[job_id] == "pending"  # requeued: the same job id, queued again
    assert summary(spec.run_dir)["status"] == "interrupted"
    # SLURM holds a requeued job back for two minutes; let it start sooner, though not at once:
    # slurmd refuses to launch a job it killed a moment ago ("already killed, do not launch batch
    # job") and the job fails
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "starttime=now"], check=True)
    wait_finished(executor, [job_id])
    done = summary(spec.run_dir)
    assert done["status"] == "completed", spec.log.read_text()
    assert done["epochs_completed"] == epochs and done["executor"]["job_id"] == job_id
    assert spec.log.read_text().count("interrupted") >= 1


def test_slurm_runs_one_job_array_at_most_jobs_at_a_time(tmp_path, data_dir, slurm_cluster):
    executor = create_executor("slurm", {"time": 10}, 1)
    specs = [trial(data_dir, tmp_path / "sweep", f"t{i}", epochs=1) for i in range(2)]
    ids = executor.submit(specs)
    assert len({job_id.split("_")[0] for job_id in ids}) == 1  # one sbatch, one array
    most = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        states = executor.states(ids)
        most = max(most, sum(s == "running" for s in states.values()))
        if all(s == "finished" for s in states.values()):
            break
        time.sleep(0.1)
    assert most == 1
    assert all(summary(s.run_dir)["status"] == "completed" for s in specs)


def test_slurm_cancel_stops_running_and_queued_trials(tmp_path, data_dir, slurm_cluster):
    executor = create_executor("slurm", {}, 1)
    specs = [trial(data_dir, tmp_path / "sweep", f"t{i}", epochs=LONG) for i in range(2)]
    ids = executor.submit(specs)
    wait_steps(specs[0].run_dir, 20)
    executor.cancel(ids)
    assert executor.states(ids) == {job_id: "finished" for job_id in ids}
    assert summary(specs[0].run_dir)["status"] == "interrupted"  # it saved itself
    assert not (specs[1].run_dir / "summary.json").exists()  # never started


def test_slurm_shared_jobs_run_their_trials_in_turn_from_one_warm_process(
        tmp_path, data_dir, slurm_cluster):
    executor = create_executor("slurm", {"trials_per_job": 3}, 1)
    specs = [trial(data_dir, tmp_path / "sweep", f"t{i}", epochs=2) for i in range(4)]
    ids = executor.submit(specs)
    jobs = [job_id.partition("+")[0] for job_id in ids]
    assert [job_id.partition("+")[2] for job_id in ids] == ["0", "1", "2", "0"]
    assert jobs[0] == jobs[1] == jobs[2] != jobs[3]  # two tasks of one array: 3 trials and 1
    seen, most = [], 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        states = executor.states(ids)
        running = [i for i, job_id in enumerate(ids) if states[job_id] == "running"]
        most = max(most, len(running))
        seen += [r for r in running if r not in seen]
        if all(s == "finished" for s in states.values()):
            break
        time.sleep(0.1)
    assert most == 1 and seen == sorted(seen)  # one at a time (--jobs 1), in their order
    done = [summary(spec.run_dir) for spec in specs]
    assert [d["status"] for d in done] == ["completed"] * 4, specs[0].log.read_text()
    assert [d["executor"]["job_id"] for d in done] == ids  # each trial its own id and lease
    assert len({d["executor"]["forked_from"] for d in done[:3]}) == 1  # one warm process per job
    assert len({d["pid"] for d in done}) == 4
    assert "starting the trial" in specs[2].log.read_text()
    waiting = executor.describe(ids)
    assert all("reason" not in info for info in waiting.values())


def test_a_shared_slurm_job_stopped_saves_its_trial_and_starts_no_other(
        tmp_path, data_dir, slurm_cluster):
    executor = create_executor("slurm", {"trials_per_job": 2}, 1)
    specs = [trial(data_dir, tmp_path / "sweep", f"t{i}", epochs=LONG) for i in range(2)]
    ids = executor.submit(specs)
    wait_steps(specs[0].run_dir, 20)
    assert executor.states(ids) == {ids[0]: "running", ids[1]: "pending"}
    assert executor.describe([ids[1]])[ids[1]]["reason"].startswith("SharedJob")
    # what preemption and the time limit do: SIGTERM to the job
    subprocess.run(["scancel", "--signal=TERM", ids[0].partition("+")[0]], check=True)
    wait_finished(executor, ids)
    assert summary(specs[0].run_dir)["status"] == "interrupted", specs[0].log.read_text()
    assert not (specs[1].run_dir / "summary.json").exists()  # never started
    again = executor.submit(specs)  # the same command again: continues t0, then runs t1
    wait_finished(executor, again)
    done = [summary(spec.run_dir) for spec in specs]
    assert [(d["status"], d["epochs_completed"]) for d in done] == [("completed", LONG)] * 2, \
        specs[0].log.read_text()


def test_a_shared_slurm_job_warned_of_its_time_limit_requeues_and_continues(
        tmp_path, data_dir, slurm_cluster):
    executor = create_executor("slurm", {"trials_per_job": 2}, 1)
    specs = [trial(data_dir, tmp_path / "sweep", "t0", epochs=1),
             trial(data_dir, tmp_path / "sweep", "t1", epochs=LONG)]
    ids = executor.submit(specs)
    wait_steps(specs[1].run_dir, 20)
    assert executor.states(ids) == {ids[0]: "finished", ids[1]: "running"}
    subprocess.run(["scancel", "--signal=USR2", ids[0].partition("+")[0]], check=True)
    deadline = time.monotonic() + 120
    while executor.states(ids)[ids[1]] != "pending" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert executor.states(ids)[ids[1]] == "pending"  # the job requeued, its trial saved
    assert summary(specs[1].run_dir)["status"] == "interrupted"
    time.sleep(3)  # as in the unshared test: slurmd refuses a job it killed a moment ago
    subprocess.run(["scontrol", "update", f"jobid={ids[0].partition('+')[0]}", "starttime=now"],
                   check=True)
    wait_finished(executor, ids)
    first, second = summary(specs[0].run_dir), summary(specs[1].run_dir)
    assert first["status"] == "completed" and first["epochs_completed"] == 1
    assert specs[0].log.read_text().count("completed:") == 1  # the re-run job did not train it again
    assert second["status"] == "completed" and second["epochs_completed"] == LONG, specs[1].log.read_text()


def engine_module(name: str):
    """Import a module of an optional engine: skipped on a laptop without it, a failure in CI."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI ({e}): pip install -e \".[test]\"")
        pytest.skip(f"{name} cannot be imported: {e}")


def test_without_slurm_the_executor_says_what_is_missing(monkeypatch, tmp_path):
    engine_module("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(ExecutorUnavailable, match="sbatch.*not found"):
        create_executor("slurm", {}, 2)


@pytest.mark.parametrize("name, package", [("slurm", "submitit"), ("ray", "ray")])
def test_a_missing_engine_package_says_which_extra_to_install(monkeypatch, name, package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if it were not installed
    monkeypatch.delitem(sys.modules, f"mnistlab.sweep.executors.{name}", raising=False)
    with pytest.raises(ExecutorUnavailable, match=rf'pip install -e "\.\[{name}\]"'):
        executor_class(name)


@pytest.mark.parametrize("name, options, problem", [
    ("slurm", {"time": "1h"}, "executor.slurm.time: give a whole number"),
    ("slurm", {"mem_gb": -1}, "executor.slurm.mem_gb"),
    ("slurm", {"sbatch": ["-C avx512"]}, "not a long sbatch flag"),
    ("slurm", {"trials_per_job": 0}, "executor.slurm.trials_per_job: give how many trials one job"),
    ("slurm", {"trials_per_job": True}, "executor.slurm.trials_per_job: give how many"),
    ("ray", {"cpus_per_trial": 0}, "executor.ray.cpus_per_trial"),
    ("ray", {"gpus_per_trial": "one"}, "executor.ray.gpus_per_trial"),
    ("ray", {"connect_timeout": 0}, "executor.ray.connect_timeout"),
])
def test_bad_executor_settings_are_config_errors(name, options, problem):
    module = engine_module(f"mnistlab.sweep.executors.{name}")
    check = module.check_slurm_options if name == "slurm" else module.check_ray_options
    with pytest.raises(ConfigError, match=problem):
        check(options)


# ---------------------------------------------------------------- whole sweeps, driven by mnistlab sweep


def sweep_file(tmp_path: Path, data_dir: Path, epochs: int, lrs=(0.01, 0.02)) -> Path:
    """A sweep of len(lrs) tiny conv-net trials under tmp_path/runs/s."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_config_dict(
        data_dir, tmp_path / "runs", train={"epochs": epochs, "log_every": 1})))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": "tiny.yaml",
                                    "grid": {"optim.lr": list(lrs)}}))
    return path


def start_sweep(path: Path, engine: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mnistlab", "sweep", str(path), "--executor",
                             engine, "--jobs", "2", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def trial_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def ran_once(run_dir: Path) -> dict:
    """The completed summary of a trial whose every attempt ran in this one directory, in turn."""
    done = summary(run_dir)
    assert done["status"] == "completed", (run_dir / "trial.log").read_text()
    log = (run_dir / "trial.log").read_text()
    assert "being written by another" not in log and "already completed" not in log, log
    assert log.count("completed:") == 1, log  # one attempt completed it; none ran it again
    return done


def test_sweep_completes_then_a_rerun_submits_nothing(tmp_path, data_dir, engine):
    path = sweep_file(tmp_path, data_dir, epochs=1)
    first = start_sweep(path, engine)
    out = first.communicate(timeout=900)[0]
    assert first.returncode == 0, out
    directory = tmp_path / "runs" / "s"
    dirs = trial_dirs(directory)
    assert len(dirs) == 2
    jobs = {d: json.loads((d / "job.json").read_text()) for d in dirs}
    for d in dirs:
        ran = ran_once(d)["executor"]
        assert (ran["name"], ran["job_id"]) == (engine, jobs[d]["job_id"])
    again = start_sweep(path, engine)
    out = again.communicate(timeout=900)[0]
    assert again.returncode == 0, out
    assert "nothing to run: 2 of 2 trials already completed" in out
    assert trial_dirs(directory) == dirs
    assert {d: json.loads((d / "job.json").read_text()) for d in dirs} == jobs  # no new job


def test_driver_killed_mid_sweep_then_started_again_completes_each_trial_once(
        tmp_path, data_dir, engine):
    path = sweep_file(tmp_path, data_dir, epochs=4)
    directory = tmp_path / "runs" / "s"
    driver = start_sweep(path, engine)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not list(directory.glob("*/metrics.jsonl")):
        time.sleep(0.1)
    os.kill(driver.pid, 9)  # no handler, no cleanup: the driver just vanishes
    driver.communicate()
    again = start_sweep(path, engine)
    out = again.communicate(timeout=900)[0]
    assert again.returncode == 0, out
    dirs = trial_dirs(directory)
    assert len(dirs) == 2
    for d in dirs:
        done = summary(d)
        assert done["status"] == "completed" and done["epochs_completed"] == 4, out
        assert (d / "trial.log").read_text().count("completed:") == 1


def test_a_sweep_of_shared_slurm_jobs_survives_its_driver_killed(tmp_path, data_dir, slurm_cluster):
    path = sweep_file(tmp_path, data_dir, epochs=4, lrs=(0.01, 0.02, 0.03))
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "executor": {"slurm": {"trials_per_job": 2}}}))
    directory = tmp_path / "runs" / "s"
    driver = start_sweep(path, "slurm")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not list(directory.glob("*/metrics.jsonl")):
        time.sleep(0.1)
    os.kill(driver.pid, 9)
    driver.communicate()
    again = start_sweep(path, "slurm")
    out = again.communicate(timeout=900)[0]
    assert again.returncode == 0, out
    dirs = trial_dirs(directory)
    jobs = [json.loads((d / "job.json").read_text())["job_id"] for d in dirs]
    assert sorted(j.partition("+")[2] for j in jobs) == ["0", "0", "1"], jobs  # 2 + 1 per job
    for d, job_id in zip(dirs, jobs):
        assert ran_once(d)["executor"]["job_id"] == job_id


def test_two_drivers_started_at_once_run_each_trial_once(tmp_path, data_dir, engine):
    path = sweep_file(tmp_path, data_dir, epochs=1)
    drivers = [start_sweep(path, engine) for _ in range(2)]
    outs = [d.communicate(timeout=900)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], outs
    dirs = trial_dirs(tmp_path / "runs" / "s")
    assert len(dirs) == 2
    for d in dirs:
        ran_once(d)


def test_detach_is_refused_on_ray_whose_tasks_die_with_their_driver(tmp_path, data_dir):
    from typer.testing import CliRunner

    from mnistlab.cli import app

    result = CliRunner().invoke(app, ["sweep", str(sweep_file(tmp_path, data_dir, epochs=1)),
                                      "--executor", "ray", "--detach"])
    assert result.exit_code == 2
    assert "--detach: Ray tasks belong to the driver" in result.output
    assert not (tmp_path / "runs" / "s").exists()


CANCEL_IN_AN_IGNORING_WORKER = """
import _thread, json, signal, sys, threading, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in the workers of a Ray started in the background
from mnistlab.sweep.executors.ray import run_trial
log = sys.argv[1]
threading.Timer(2.0, _thread.interrupt_main).start()  # what ray.cancel does in the worker
start = time.monotonic()
try:
    code = run_trial([sys.executable, "-c", "import time; time.sleep(60)"], {}, log)
    print(json.dumps({"returned": code}))
except KeyboardInterrupt:
    print(json.dumps({"interrupted_after": round(time.monotonic() - start, 1)}))
"""


def test_a_cancelled_ray_task_stops_its_trial_even_where_sigint_is_ignored(tmp_path):
    pytest.importorskip("ray")
    done = subprocess.run([sys.executable, "-c", CANCEL_IN_AN_IGNORING_WORKER, str(tmp_path / "log")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "interrupted_after" in result, result  # not the trial's own end, a minute later


def test_a_local_ray_refuses_trials_no_node_can_run_instead_of_waiting_forever(tmp_path, data_dir):
    engine_module("ray")
    path = sweep_file(tmp_path, data_dir, epochs=1)
    definition = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**definition, "executor": {"ray": {"gpus_per_trial": 1}}}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local instance
    done = subprocess.run([sys.executable, "-m", "mnistlab", "sweep", str(path), "--executor", "ray"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "each trial asks for 1 GPU(s), more than any node" in " ".join(done.stderr.split())
    assert "gpus_per_trial" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "runs" / "s").exists() or not trial_dirs(tmp_path / "runs" / "s")
