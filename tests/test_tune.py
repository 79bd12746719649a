"""`dfkd tune`: search space checks, pruning, storage, workers, kill-and-retry, PostgreSQL.

The distillation job is faked through the tuner's explicit seams: ``TuneSpec(job_fn=
"test_tune:job_entry", resolver="test_tune:fake_resolve")`` (passed on to worker processes
as arguments). ``job_entry`` records each in-process call in ``CALLS`` and runs ``JOB_IMPL``
(``fake_job`` unless a test swaps it).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from baselines.errors import ConfigError, UnknownNameError
from benchmarks import cmd_tune, tune
from pg_fixture import pg_url  # noqa: F401 - the fixture, imported explicitly

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


# --------------------------------------------------------------------------- fakes
def fake_resolve(user: dict) -> dict:
    """Stand-in for benchmarks.job.resolve_config: defaults + the STARS range checks."""
    cfg = json.loads(json.dumps(user))
    st = cfg.setdefault("stars", {})
    for k in ("alpha", "beta"):
        if st.get(k, 0.5) < 0:
            raise ConfigError(f"stars.{k} is negative")
    cfg["distill"].setdefault("epochs", 3)
    return cfg


def score(stars: dict) -> float:
    """A smooth 'validation accuracy' with its maximum at alpha=0.45, beta=0.3, q=0.94."""
    return round(0.9 - (stars["alpha"] - 0.45) ** 2 - (stars["beta"] - 0.3) ** 2
                 - 10 * (stars["q"] - 0.94) ** 2, 6)


def fake_job(cfg: dict, on_eval) -> dict:
    """Reports val_acc rising to score(); test_acc is a decoy the tuner must ignore."""
    hang = os.environ.get("DFKD_FAKE_HANG")
    if hang and not os.path.exists(os.path.join(hang, "started.json")):
        with open(os.path.join(hang, "started.json"), "w") as fh:
            json.dump({"pid": os.getpid(), "stars": cfg["stars"]}, fh)
        time.sleep(120)  # killed here by the test
    delay = float(os.environ.get("DFKD_FAKE_SLEEP", "0"))
    v, epochs = score(cfg["stars"]), cfg["distill"]["epochs"]
    for e in range(epochs):
        time.sleep(delay / epochs)
        if on_eval is not None:
            on_eval(e, {"val_acc": v * (e + 1) / epochs, "test_acc": 1.0 - v, "agreement": v})
    return {"status": "ok", "val_acc": v, "agreement": v, "student_acc": round(1.0 - v, 6)}


def job_entry(cfg: dict, on_eval) -> dict:
    CALLS.append({"stars": dict(cfg["stars"]), "on_eval": on_eval is not None})
    return JOB_IMPL(cfg, on_eval)


CALLS: list[dict] = []
JOB_IMPL = fake_job
THIS = sys.modules[__name__]

PRESET = """
[bench]
datasets = ["toy"]
pairs = ["smallcnn:spiking_smallcnn", "resnet18:spiking_resnet18"]
synthesizers = ["deepinversion"]
treatment = ["stars"]
seeds = [3]
T = 2

[run]
val_size = 100

[distill]
epochs = 3
eval_every = 1

[budget.deepinversion]
deepinversion = {iterations = 5}
distill = {kd_steps = 2}

[params.stars]
kappa = 0.2
weighting = "raw"  # score() is shaped on the published loss-weight ranges, which raw searches

[overrides.toy]
distill = {lr = 0.05}
"""


def write_preset(tmp_path: Path, tune_section: str = "", name: str = "p") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(PRESET + ("\n[tune]\n" + tune_section if tune_section else ""))
    return str(path)


@pytest.fixture
def fakes(monkeypatch):
    """The in-process call log (worker subprocesses find this module on PYTHONPATH)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]))
    CALLS.clear()
    monkeypatch.setattr(THIS, "JOB_IMPL", fake_job)
    return CALLS


def spec(preset: str, out: Path, **kw) -> tune.TuneSpec:
    base = dict(preset=preset, synthesizer="deepinversion", trials=3, out=str(out), plots=False,
                poll_seconds=0.1, job_fn="test_tune:job_entry", resolver="test_tune:fake_resolve")
    base.update(kw)
    return tune.TuneSpec(**base)


def load(out: Path, study: str | None = None, storage: str | None = None) -> optuna.Study:
    url = tune.driver_url(storage or str(out / "study.journal"))
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend
        url = optuna.storages.JournalStorage(JournalFileBackend(url))
    name = study or optuna.study.get_all_study_names(url)[0]
    return optuna.load_study(study_name=name, storage=url)


# --------------------------------------------------------------------------- plan and space
def test_plan_takes_pair_budget_and_objective_from_the_preset(tmp_path, fakes):
    p = tune.make_plan(spec(write_preset(tmp_path), tmp_path / "o"))
    run = p.base["run"]
    assert (run["dataset"], run["teacher"], run["student"]) == ("toy", "smallcnn", "spiking_smallcnn")
    assert run["regularizers"] == ["stars"] and run["seed"] == 3 and run["val_size"] == 100
    assert p.base["deepinversion"] == {"iterations": 5} and p.base["distill"]["kd_steps"] == 2
    assert p.base["distill"]["lr"] == 0.05 and run["T"] == 2  # [overrides.toy], [bench] T
    assert p.metric == "val_acc" and p.base["stars"] == {"kappa": 0.2, "weighting": "raw"}  # [params.stars]
    assert p.space.to_json()["q"] == {"type": "float", "low": 0.9, "high": 0.98, "log": False}

    p2 = tune.make_plan(spec(write_preset(tmp_path), tmp_path / "o", pair="resnet18:spiking_resnet18",
                             objective="agreement", sets=["distill.epochs=7"]))
    assert (p2.base["run"]["teacher"], p2.base["distill"]["epochs"]) == ("resnet18", 7)
    assert p2.metric == "agreement" and p2.base["distill"]["heldout_images"] == 256
    with pytest.raises(UnknownNameError, match="deepinversion"):
        tune.make_plan(spec(write_preset(tmp_path), tmp_path / "o", synthesizer="deepinversoin"))


def test_space_overrides_add_keys_and_params_land_in_stars(tmp_path, fakes):
    pre = write_preset(tmp_path, 'kappa = [0.05, 0.5]\ntar_variant = ["aligned", "seed"]\n'
                                 'alpha = {low = 0.1, high = 0.9}\nq = []\nval_size = 50\n')
    p = tune.make_plan(spec(pre, tmp_path / "o"))
    sp = p.space.to_json()
    assert set(sp) == {"alpha", "beta", "kappa", "tar_variant"}  # q = [] removed it
    assert sp["alpha"]["low"] == 0.1 and sp["tar_variant"]["choices"] == ["aligned", "seed"]
    assert p.base["run"]["val_size"] == 50
    cfg = tune.apply_params(p.base, {"alpha": 0.2, "tar_variant": "seed", "distill.lr": 0.01})
    assert cfg["stars"] == {"kappa": 0.2, "weighting": "raw", "alpha": 0.2, "tar_variant": "seed"}
    assert cfg["distill"]["lr"] == 0.01 and p.base["stars"] == {"kappa": 0.2, "weighting": "raw"}


def test_list_choices_and_dotted_keys_reach_the_config(tmp_path, fakes):
    pre = write_preset(tmp_path, 'rca_phases = [["synthesis"], ["synthesis", "distill"]]\n'
                                 'distill.lr = [0.01, 0.1]\nalpha = [0.4, 0.4]\n')
    s = tune.run_tune(spec(pre, tmp_path / "o", trials=4, final_test=False))
    sp = s["search_space"]
    assert sp["rca_phases"]["choices"] == ["synthesis", "synthesis+distill"]
    assert sp["distill.lr"]["type"] == "float"
    assert {tuple(c["stars"]["rca_phases"]) for c in fakes} <= {
        ("synthesis",), ("synthesis", "distill")}
    assert all(c["stars"]["alpha"] == 0.4 for c in fakes)
    toml = tomllib.loads((tmp_path / "o" / "best_params.toml").read_text())
    assert toml["stars"]["rca_phases"] in (["synthesis"], ["synthesis", "distill"])
    assert "distill.lr" not in toml["stars"]  # not a [stars] key: given as a --set note
    assert "--set distill.lr=" in (tmp_path / "o" / "best_params.toml").read_text()


def test_space_is_checked_by_the_real_resolve_config(tmp_path):
    pytest.importorskip("benchmarks.job")
    from baselines.registry import REGULARIZERS
    if "stars" not in REGULARIZERS.names() or not (tune.PRESET_DIR / "quick.toml").exists():
        pytest.skip("needs the STARS plugin and the quick preset")
    quick = (tune.PRESET_DIR / "quick.toml").read_text()
    good = tmp_path / "good.toml"
    good.write_text(quick + '\n[tune]\ntar_variant = ["aligned", "seed"]\n')
    plan = tune.make_plan(spec(str(good), tmp_path / "o", synthesizer="cmi", resolver=None))
    assert plan.base["run"]["val_size"] == tune.DEFAULT_VAL_SIZE
    bad = tmp_path / "bad.toml"
    bad.write_text(quick + '\n[tune]\ntar_varaint = ["aligned", "seed"]\n')
    with pytest.raises(UnknownNameError, match="tar_variant"):
        tune.make_plan(spec(str(bad), tmp_path / "o", synthesizer="cmi", resolver=None))


@pytest.mark.parametrize("section, match", [
    ("q = [0.9, 1.2]", "q"), ("q = [0.0, 0.9]", "q"), ("alpha = [-0.1, 0.5]", "negative"),
    ("beta = [0.5, 0.2]", "low is above high"), ("kappa = [0.0, 0.5]", "kappa"),
    ("alpha = 0.5", "neither"), ("objective = \"test-acc\"", "objective"),
])
def test_bad_space_is_a_config_error_before_any_trial(tmp_path, fakes, section, match):
    out = tmp_path / "o"
    with pytest.raises(ConfigError, match=match):
        tune.run_tune(spec(write_preset(tmp_path, section), out))
    assert fakes == [] and not (out / "study.journal").exists()


def test_unopenable_storage_url_is_a_config_error_naming_it(tmp_path, fakes):
    url = "postgresql://nouser@127.0.0.1:1/x"
    t0 = time.time()
    with pytest.raises(ConfigError) as err:
        tune.run_tune(spec(write_preset(tmp_path), tmp_path / "o", storage=url))
    msg = str(err.value)
    assert url in msg and "server running" in msg and fakes == []
    assert time.time() - t0 < 30


def test_same_study_name_with_a_different_space_is_refused(tmp_path, fakes):
    out = tmp_path / "o"
    tune.run_tune(spec(write_preset(tmp_path), out, trials=1, final_test=False, study="s"))
    n = len(fakes)
    wider = write_preset(tmp_path, "alpha = [0.1, 0.9]", name="wider")
    with pytest.raises(ConfigError, match="created with search space"):
        tune.run_tune(spec(wider, out, trials=2, study="s"))
    assert len(fakes) == n and len(load(out, "s").trials) == 1


def _machine_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "holds trials computed on" in str(w.message)]


def test_trials_record_their_machine_and_a_study_resumed_elsewhere_warns(tmp_path, fakes, monkeypatch):
    import warnings

    from benchmarks import tune_machines
    out, pre = tmp_path / "o", write_preset(tmp_path)
    here = tune_machines.machine_for("auto")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        s = tune.run_tune(spec(pre, out, trials=2, final_test=False))
        s = tune.run_tune(spec(pre, out, trials=2, final_test=False))  # resumed here: no warning
    assert _machine_warnings(rec) == []
    assert [t.user_attrs[tune_machines.MACHINE_KEY] for t in load(out).trials] == [here, here]
    assert s["machines"] == [here] and not any("machines" in n for n in s["notes"])

    other = {"cpu": "Another CPU (family 6, model 85, stepping 7); kernels AVX2", "gpu": None,
             "platform": "platform Linux-other"}
    monkeypatch.setattr(tune_machines, "this_machine", lambda: dict(other))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        s = tune.run_tune(spec(pre, out, trials=3, final_test=False))
    msg = _machine_warnings(rec)
    assert len(msg) == 1 and here in msg[0] and "trials 0, 1" in msg[0] and other["cpu"] in msg[0]
    assert load(out).trials[2].user_attrs[tune_machines.MACHINE_KEY] == other["cpu"]
    assert s["machines"] == sorted([here, other["cpu"]])
    assert any("2 machines" in n for n in s["notes"])


def test_status_lists_every_trial_and_runs_or_writes_nothing(tmp_path, fakes, capsys):
    out, pre = tmp_path / "o", write_preset(tmp_path)
    tune.run_tune(spec(pre, out, trials=2, final_test=False))
    journal = (out / "study.journal").read_bytes()
    fakes.clear()
    argv = ["--preset", pre, "--synthesizer", "deepinversion", "--trials", "3", "--out", str(out),
            "--job-fn", "test_tune:job_entry", "--resolver", "test_tune:fake_resolve", "--status"]
    assert cmd_tune.main(argv) == 0
    text = capsys.readouterr().out
    assert fakes == [] and (out / "study.journal").read_bytes() == journal  # 2 of 3: still ran nothing
    assert "2 of 3 finished (2 complete, 0 pruned)" in text and "best so far: trial" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| 0 |") or ln.startswith("| 1 |")]
    from benchmarks.tune_machines import machine_for
    assert len(rows) == 2 and all("| complete |" in r and r.endswith(f"{machine_for('auto')} |") for r in rows)
    values = {t.number: t.value for t in load(out).trials}
    assert all(f"| {values[n]:.4f} |" in rows[n] for n in (0, 1))


def test_status_of_a_missing_study_is_a_clear_error_that_creates_nothing(tmp_path, fakes):
    out, pre = tmp_path / "o", write_preset(tmp_path)
    with pytest.raises(ConfigError, match="no study journal at"):
        tune.run_tune(spec(pre, out, status=True))
    assert not out.exists()
    tune.run_tune(spec(pre, out, trials=1, final_test=False, study="mine"))
    with pytest.raises(ConfigError, match="no study 'other'.*'mine'"):
        tune.run_tune(spec(pre, out, status=True, study="other"))


def test_trials_without_the_attribute_take_their_machine_from_the_trial_file(tmp_path):
    from optuna.distributions import FloatDistribution

    from benchmarks.tune_machines import other_machines_message, trial_machines
    study = optuna.create_study(direction="maximize")
    for v in (0.5, 0.6):
        study.add_trial(optuna.trial.create_trial(value=v, params={"alpha": v},
                                                  distributions={"alpha": FloatDistribution(0, 1)}))
    (tmp_path / "trials").mkdir()
    (tmp_path / "trials" / "trial_0000.json").write_text(json.dumps(
        {"number": 0, "row": {"device": "cpu", "versions": {"cpu": "Old CPU; kernels AVX2"}}}))
    (tmp_path / "trials" / "trial_0001.json").write_text(json.dumps({"number": 1, "row": {}}))  # pruned
    assert trial_machines(study, tmp_path) == {0: "Old CPU; kernels AVX2"}
    here = {"cpu": "New CPU; kernels AVX512", "gpu": None, "platform": "platform x"}
    msg = other_machines_message(study, tmp_path, here)
    assert "Old CPU; kernels AVX2 (trials 0)" in msg and "New CPU" in msg
    assert other_machines_message(study, tmp_path, {**here, "cpu": "Old CPU; kernels AVX2"}) is None


# --------------------------------------------------------------------------- a full run
def test_run_writes_best_params_measures_test_once_and_resumes(tmp_path, fakes):
    out = tmp_path / "o"
    s = tune.run_tune(spec(write_preset(tmp_path), out, trials=4, plots=True))
    study = load(out)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    best = max(complete, key=lambda t: t.value)
    # the objective is the validation accuracy, never the (decoy) test accuracy
    assert s["best_value"] == best.value == score(best.params)
    assert [c["on_eval"] for c in fakes].count(False) == 1  # one test re-run, of the best
    assert s["test_acc_of_best"] == pytest.approx(1.0 - best.value)
    assert fakes[-1]["stars"] == {"kappa": 0.2, "weighting": "raw", **best.params}
    # intermediate reports are the val_acc curve (pruning acts on it)
    curve = {e: pytest.approx(best.value * (e + 1) / 3) for e in range(3)}
    assert best.intermediate_values == curve
    # best_params.toml round-trips into the [stars] section
    toml = tomllib.loads((out / "best_params.toml").read_text())
    assert toml == {"stars": best.params}
    merged = tune.apply_params(fake_resolve(tune.make_plan(
        spec(write_preset(tmp_path), out)).base), toml["stars"])
    assert {k: merged["stars"][k] for k in best.params} == best.params
    summary = json.loads((out / "tune_summary.json").read_text())
    assert summary["trials"]["complete"] == 4 and summary["objective"] == "val-acc"
    assert {"optimization_history.png", "param_importances.png", "slice.png"} <= {
        f.name for f in out.glob("*.png")}
    assert summary["storage"].endswith("study.journal") and summary["wall_seconds"] > 0
    rows = sorted((out / "trials").glob("trial_*.json"))
    assert len(rows) == 4 and "student_acc" not in json.loads(rows[0].read_text())["row"]

    # same command again: nothing to do, the test accuracy is not measured a second time
    n = len(fakes)
    tune.run_tune(spec(write_preset(tmp_path), out, trials=4))
    assert len(fakes) == n
    # more trials requested: only the missing one runs
    s5 = tune.run_tune(spec(write_preset(tmp_path), out, trials=5, final_test=False))
    assert len(fakes) == n + 1  # (it may be pruned: COMPLETE + PRUNED count)
    assert s5["trials"]["complete"] + s5["trials"]["pruned"] == 5


def test_agreement_objective_reports_agreement_not_val_or_test(tmp_path, fakes):
    s = tune.run_tune(spec(write_preset(tmp_path), tmp_path / "o", trials=2,
                           objective="agreement", final_test=False, study="a"))
    t = load(tmp_path / "o", "a").trials[0]
    assert s["metric"] == "agreement" and s["base_config"]["distill"]["heldout_images"] == 256
    assert t.intermediate_values == {0: t.value, 1: t.value, 2: t.value}  # the flat agreement
    with pytest.raises(ConfigError, match="optimizes 'agreement'"):
        tune.run_tune(spec(write_preset(tmp_path), tmp_path / "o", trials=2, study="a"))


def test_one_complete_trial_skips_importances_with_a_note(tmp_path, fakes):
    s = tune.run_tune(spec(write_preset(tmp_path), tmp_path / "o", trials=1, plots=True,
                           final_test=False))
    assert "param_importances.png" not in s["plots"] and "optimization_history.png" in s["plots"]
    assert any("importances skipped" in n for n in s["notes"])


def test_median_pruning_stops_a_trial_below_the_median(tmp_path, fakes, monkeypatch):
    levels = iter([0.8, 0.9, 0.86, 0.1, 0.95])  # median after 3 trials: 0.86
    seen: list[list[int]] = []

    def job(cfg, on_eval):
        level, epochs = next(levels), []
        seen.append(epochs)
        for e in range(4):
            epochs.append(e)
            on_eval(e, {"val_acc": level, "test_acc": 0.99})
        return {"status": "ok", "val_acc": level, "student_acc": 0.99}

    monkeypatch.setattr(THIS, "JOB_IMPL", job)
    pre = write_preset(tmp_path, "prune_startup_trials = 2\nprune_warmup_steps = 0\n")
    s = tune.run_tune(spec(pre, tmp_path / "o", trials=5, final_test=False))
    states = [t.state for t in load(tmp_path / "o").trials]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED, TrialState.COMPLETE]
    assert seen[3] == [0] and seen[4] == [0, 1, 2, 3]  # stopped at its first evaluation
    assert s["trials"]["pruned"] == 1 and s["best_value"] == 0.95


def test_a_trial_that_reaches_its_last_evaluation_is_complete_not_pruned(tmp_path, fakes, monkeypatch):
    # Optuna's median pruner compares a trial's best value so far with the median at this step:
    # the last trial is above it at epochs 0 and 1 and below it only at its last evaluation
    curves = iter([[0.1, 0.5, 0.9], [0.1, 0.5, 0.95], [0.1, 0.5, 0.92], [0.3, 0.6, 0.7]])

    def job(cfg, on_eval):
        curve = next(curves)
        assert len(curve) == cfg["distill"]["epochs"]
        for e, v in enumerate(curve):
            on_eval(e, {"val_acc": v, "test_acc": 0.99})
        return {"status": "ok", "val_acc": curve[-1], "student_acc": 0.99}

    monkeypatch.setattr(THIS, "JOB_IMPL", job)
    pre = write_preset(tmp_path, "prune_startup_trials = 2\nprune_warmup_steps = 0\n")
    tune.run_tune(spec(pre, tmp_path / "o", trials=4, final_test=False))
    last = load(tmp_path / "o").trials[3]
    assert last.state == TrialState.COMPLETE and last.value == 0.7  # its whole budget ran: a result


def test_failed_job_fails_its_trial_and_too_many_stop_the_worker(tmp_path, fakes, monkeypatch):
    monkeypatch.setattr(THIS, "JOB_IMPL",
                        lambda cfg, on_eval: {"status": "failed", "error": "NaN in tar"})
    s = tune.run_tune(spec(write_preset(tmp_path), tmp_path / "o", trials=2, max_failed=2))
    study = load(tmp_path / "o")
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    assert "NaN in tar" in study.trials[0].user_attrs["dfkd_error"]
    assert s["best_params"] is None and not (tmp_path / "o" / "best_params.toml").exists()


def test_ctrl_c_fails_the_trial_and_queues_its_params(tmp_path, fakes, monkeypatch):
    def interrupted(cfg, on_eval):
        raise KeyboardInterrupt

    monkeypatch.setattr(THIS, "JOB_IMPL", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tune.run_tune(spec(write_preset(tmp_path), tmp_path / "o", trials=2))
    t0, t1 = load(tmp_path / "o").trials
    assert (t0.state, t1.state) == (TrialState.FAIL, TrialState.WAITING)
    assert t1.params == t0.params and t1.system_attrs["failed_trial"] == 0


# --------------------------------------------------------------------------- clean-up logic
def _frozen(number: int, worker: dict | None, started_ago: float) -> optuna.trial.FrozenTrial:
    import datetime as dt
    return optuna.trial.FrozenTrial(
        number=number, state=TrialState.RUNNING, value=None, values=None,
        datetime_start=dt.datetime.now() - dt.timedelta(seconds=started_ago),
        datetime_complete=None, params={}, distributions={},
        user_attrs={} if worker is None else {tune.WORKER_KEY: worker}, system_attrs={},
        intermediate_values={}, trial_id=number)


def test_stale_reason_dead_pid_heartbeat_and_inherited_records():
    host, now = socket.gethostname(), time.time()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = {"host": host, "pid": os.getpid(), "start": tune._proc_start(os.getpid()),
          "trial": 5, "t": now}
    assert tune.stale_reason(_frozen(5, me, 1), grace=60) is None
    assert "gone" in tune.stale_reason(_frozen(5, {**me, "pid": dead.pid}, 1), grace=60)
    assert "gone" in tune.stale_reason(_frozen(5, {**me, "start": "1"}, 1), grace=60)  # pid reused
    remote = {**me, "host": "elsewhere", "pid": 1}
    assert tune.stale_reason(_frozen(5, remote, 1), grace=60) is None
    assert "heartbeat" in tune.stale_reason(_frozen(5, {**remote, "t": now - 100}, 1), grace=60)
    # a record copied from the failed trial 2 into its retry 5 does not count as the owner
    old = {**me, "pid": dead.pid, "trial": 2}
    assert tune.stale_reason(_frozen(5, old, 1), grace=60) is None
    assert "without a worker record" in tune.stale_reason(_frozen(5, old, 100), grace=60)


def test_surplus_trial_is_given_back_and_a_popped_queued_trial_requeued(tmp_path, fakes):
    plan = tune.make_plan(spec(write_preset(tmp_path), tmp_path / "o", trials=1))
    plan.out.mkdir(parents=True)
    study = tune.open_study(plan, tune.open_storage(plan))
    other = study.ask()  # another worker's trial 0 holds the only slot
    queued = {"alpha": 0.4, "beta": 0.3, "q": 0.95}
    study.enqueue_trial(queued)
    mine = study.ask()  # pops the queued trial 1: one too many
    assert tune._is_surplus(study, mine, 1) and not tune._is_surplus(study, other, 1)
    tune._give_back(study, mine, max_retry=3)
    trials = study.get_trials()
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["dfkd_surplus"]
    assert trials[2].state == TrialState.WAITING
    assert trials[2].system_attrs["fixed_params"] == queued
    assert "retry_history" not in trials[2].system_attrs  # a give-back is not a retry
    assert tune._counts(trials)["done"] == 0 and tune._counts(trials)["surplus"] == 1


def _worker_cmd(pre: str, out: Path, trials: int, study: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.cmd_tune", "--preset", pre, "--synthesizer",
            "deepinversion", "--trials", str(trials), "--out", str(out), "--study", study,
            "--worker-only", "--heartbeat-interval", "1",
            "--job-fn", "test_tune:job_entry", "--resolver", "test_tune:fake_resolve"]


def test_killed_worker_trial_is_failed_and_its_params_retried(tmp_path, fakes, monkeypatch):
    out, hang = tmp_path / "o", tmp_path / "hang"
    hang.mkdir()
    pre = write_preset(tmp_path)
    env = {**os.environ, "DFKD_FAKE_HANG": str(hang)}
    proc = subprocess.Popen(_worker_cmd(pre, out, 2, "k"), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started = hang / "started.json"
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert started.exists(), proc.stderr.read().decode() if proc.poll() is not None else "timeout"
    time.sleep(0.3)  # let the json be complete
    killed = json.loads(started.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = load(out, "k").trials[0]
    assert t0.state == TrialState.RUNNING and t0.user_attrs[tune.WORKER_KEY]["pid"] == proc.pid

    s = tune.run_tune(spec(pre, out, trials=2, study="k", final_test=False))
    trials = load(out, "k").trials
    assert trials[0].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert "gone" in retry[0].system_attrs["dfkd_retry_reason"]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == {k: killed["stars"][k] for k in ("alpha", "beta", "q")}
    assert s["trials"]["complete"] == 2 and retry[0].system_attrs["retry_history"] == [0]


def test_two_worker_processes_share_one_journal(tmp_path, fakes, monkeypatch):
    monkeypatch.setenv("DFKD_FAKE_SLEEP", "0.6")
    out = tmp_path / "o"
    s = tune.run_tune(spec(write_preset(tmp_path), out, trials=6, workers=2, final_test=False))
    trials = load(out).trials
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 6 == s["trials"]["complete"] + s["trials"]["pruned"]
    assert len(trials) == 6  # no trial beyond the requested number
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    files = sorted((out / "trials").glob("trial_*.json"))
    assert len(files) == len(trials)
    pids = {t.user_attrs[tune.WORKER_KEY]["pid"] for t in done}
    assert len(pids) == 2 and os.getpid() not in pids
    threads = {t.user_attrs[tune.WORKER_KEY]["threads"] for t in done}
    assert threads == {max(1, tune.cpu_count() // 2)}  # each worker pinned to cores // N
    assert fakes == []  # the parent ran no trial itself


def test_cli_register_and_main(tmp_path, fakes):
    import argparse
    parser = argparse.ArgumentParser(prog="dfkd")
    sub = parser.add_subparsers(dest="cmd")
    cmd_tune.register(sub)
    args = parser.parse_args(["tune", "--preset", write_preset(tmp_path), "--synthesizer",
                              "deepinversion", "--trials", "2", "--out", str(tmp_path / "o"),
                              "--set", "distill.epochs=2", "run.val_size=10", "--no-plots",
                              "--job-fn", "test_tune:job_entry", "--resolver", "test_tune:fake_resolve"])
    assert args.func is cmd_tune.run and args.sets == ["distill.epochs=2", "run.val_size=10"]
    assert args.func(args) == 0
    assert cmd_tune.main(["--preset", "nope-no-such-preset", "--synthesizer", "x",
                          "--trials", "1"]) == 2


# --------------------------------------------------------------------------- PostgreSQL
def test_two_workers_on_a_postgresql_study(tmp_path, fakes, pg_url, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DFKD_FAKE_SLEEP", "0.2")
    study = f"pg-{uuid.uuid4().hex[:8]}"
    s = tune.run_tune(spec(write_preset(tmp_path), tmp_path / "o", trials=4, workers=2,
                           storage=pg_url, study=study, final_test=False))
    trials = load(tmp_path / "o", study, pg_url).trials
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 4
    assert len({t.number for t in trials}) == len(trials)
    assert "***" in s["storage"] and pg_url.split("@")[0].split(":")[-1] not in s["storage"]


# --------------------------------------------------------------------------- real job
@pytest.mark.slow
def test_end_to_end_with_the_real_job(tmp_path, monkeypatch):
    """The real job (quick preset, Fashion-MNIST, tiny budget), about a minute on 2 cores. Its
    1-epoch teacher on 2,000 images (8-20 s) goes to a temporary cache, not the user's."""
    monkeypatch.setenv("DFKD_CACHE", str(tmp_path / "cache"))
    pytest.importorskip("benchmarks.job")
    from baselines.registry import DATASETS, REGULARIZERS
    if "stars" not in REGULARIZERS.names() or not (tune.PRESET_DIR / "quick.toml").exists():
        pytest.skip("needs the STARS plugin and the quick preset")
    try:
        DATASETS.get("fashion-mnist")().train_x
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Fashion-MNIST not available: {exc}")
    sets = ["run.train_subset=2000", "run.test_subset=200", "run.teacher_epochs=1",
            "run.val_size=100", "run.metrics_images=16", "distill.epochs=2", "distill.kd_steps=2",
            "distill.eval_every=1", "distill.batch_size=16", "deepinversion.iterations=2",
            "deepinversion.batch_size=16"]
    out = tmp_path / "o"
    s = tune.run_tune(tune.TuneSpec(preset="quick", synthesizer="deepinversion", trials=2,
                                    out=str(out), sets=sets, plots=False))
    assert s["trials"]["complete"] + s["trials"]["pruned"] == 2
    assert s["best_params"] is not None and s["test_acc_of_best"] is not None
    row = json.loads((out / "trials" / "trial_0000.json").read_text())
    assert row["row"]["status"] == "ok" and row["intermediate"]  # val_acc reported per epoch
    assert tomllib.loads((out / "best_params.toml").read_text())["stars"] == s["best_params"]


def test_default_space_follows_the_tuned_regularizers_weighting(tmp_path):
    """STARS with weighting unset (grad-share, its default) searches shares on a log scale
    around the measured default 0.1 / 0.05; a preset that sets weighting = "raw" searches the
    published loss-weight ranges."""
    def space(weighting_line: str) -> dict:
        path = tmp_path / "w.toml"
        path.write_text(PRESET.replace('weighting = "raw"', weighting_line))
        plan = tune.make_plan(tune.TuneSpec(preset=str(path), synthesizer="deepinversion", trials=1,
                                            out=str(tmp_path / "o"), resolver="test_tune:fake_resolve",
                                            objective="agreement"))
        return {p.key: p for p in plan.space.params}

    share = space("")
    assert share["alpha"].log and share["alpha"].low < 0.1 < 0.5 < share["alpha"].high
    assert share["beta"].log and share["beta"].low < 0.05 < 0.3 < share["beta"].high
    raw = space('weighting = "raw"')
    assert (raw["alpha"].low, raw["alpha"].high, raw["alpha"].log) == (0.3, 0.7, False)
    assert (raw["beta"].low, raw["beta"].high) == (0.2, 0.5)
    assert raw["q"].low == share["q"].low == 0.90

