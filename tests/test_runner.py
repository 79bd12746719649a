"""The benchmark runner: presets, job expansion, resumable rows, executors, bad input.

Most tests run *fake* jobs through the real runner: ``BenchOptions(job_fn="test_runner:fake_job",
resolve=resolve_config)`` makes the runner (and its spawned workers, which inherit sys.path)
call :func:`fake_job` instead of ``run_job``, and this module's ``resolve_config`` instead
of ``benchmarks.job.resolve_config``. The fake job appends one line per execution to
``$FAKE_COUNTER``, so tests can tell which jobs were (re)computed. The integration tests
at the end use the real resolve_config / run_job.
"""
from __future__ import annotations

import copy
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from baselines.config import deep_merge
from baselines.errors import ConfigError, DataError, UnknownNameError
from benchmarks import executors, jobs as jobs_mod, runner
from benchmarks.cost import cost_model
from benchmarks.jobs import filter_jobs, job_id_of
from benchmarks.preset import load_preset, parse_seeds, preset_names
from benchmarks.rows import ROWS_SCHEMA
from benchmarks.runner import BenchOptions, run_bench
from benchmarks.scratch import run_scratch
from benchmarks.store import code_version, read_rows

REPO = Path(__file__).resolve().parents[1]
FAKE = "test_runner:fake_job"

# --------------------------------------------------------------------------- fakes
FAKE_DEFAULTS = {
    "run": {"dataset": "toy", "data_root": None, "download": False, "teacher": "smallcnn", "teacher_epochs": None,
            "student": "spiking_smallcnn", "T": 4, "synthesizer": "deepinversion", "regularizers": [], "seed": 0,
            "device": "cpu", "train_subset": None, "test_subset": None, "progress": False, "val_size": 0,
            "metrics_images": 16, "teacher_seed": None, "neuron_backend": "eager", "student_args": {}},
    "distill": {"epochs": 2, "synth_batches": 1, "kd_steps": 3, "batch_size": 8, "eval_every": 1, "lr": 0.1,
                "temperature": 20.0},
    "deepinversion": {"iterations": 10}, "cmi": {"iterations": 5}, "fast": {"k": 2},
    "real": {}, "noise": {}, "stars": {"alpha": 0.5, "beta": 0.3}, "rca": {"alpha": 0.5}, "tar": {"beta": 0.3},
}


def resolve_config(user: dict) -> dict:
    """A stand-in for benchmarks.job.resolve_config: defaults + unknown-key checks."""
    run = deep_merge(FAKE_DEFAULTS["run"], user.get("run", {}))
    sections = ["run", "distill", run["synthesizer"], *run["regularizers"]]
    for sec in user:
        if sec not in sections:
            raise UnknownNameError("config section", sec, sections)
    out = {}
    for sec in sections:
        for key in user.get(sec, {}):
            if sec in ("run", "distill") and key not in FAKE_DEFAULTS[sec]:
                raise UnknownNameError(f"key in [{sec}]", key, list(FAKE_DEFAULTS[sec]))
        out[sec] = deep_merge(FAKE_DEFAULTS.get(sec, {}), user.get(sec, {}))  # any registered synthesizer
    return out


def fake_job(cfg: dict, out_dir: str | None = None, on_eval=None) -> dict:
    """Counts itself in $FAKE_COUNTER, sleeps $FAKE_SLEEP, fails / raises / dies on request."""
    import torch

    run = cfg["run"]
    synth, regs, seed = run["synthesizer"], run["regularizers"], run["seed"]
    with open(os.environ["FAKE_COUNTER"], "a") as fh:
        fh.write(f"{job_id_of(cfg)} {os.getpid()}\n")
    if synth in os.environ.get("FAKE_DIE", "").split(","):
        os._exit(3)  # a worker killed mid-job (OOM killer, segfault)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    if synth in os.environ.get("FAKE_RAISE", "").split(","):
        raise RuntimeError(f"fake crash in {synth}")
    failed = synth in os.environ.get("FAKE_FAIL", "").split(",")
    acc = 50.0 + 10.0 * ("stars" in regs) + seed
    return {"run_id": "x", "dataset": run["dataset"], "teacher": run["teacher"], "student": run["student"],
            "T": run["T"], "synthesizer": synth, "regularizers": [{"name": r, "params": cfg[r]} for r in regs],
            "seed": seed, "teacher_acc": 90.0, "student_acc": None if failed else acc,
            "student_acc_best": acc, "firing_rate": 0.1, "sops_per_image": 1e5,
            "images_synthesized": 64, "synthesis_seconds": 1.0 + len(regs), "distill_seconds": 1.0,
            "status": "failed" if failed else "ok", "error": "NonFiniteLossError: fake NaN" if failed else None,
            "config": cfg, "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS"),
            "pid": os.getpid()}


TINY = """
[bench]
name = "tiny"
datasets = ["toy"]
pairs = ["smallcnn:spiking_smallcnn"]
synthesizers = ["deepinversion", "cmi"]
regularizer_sets = [[], ["stars"]]
seeds = [0, 1]
references = ["teacher", "real", "scratch"]
T = 2

[distill]
epochs = 1

[budget.deepinversion]
deepinversion = {iterations = 5}
distill = {kd_steps = 7}

[params.stars]
alpha = 0.4

[cost]
kd_step_s = 2.0
synth_batch_s = {deepinversion = 30.0, cmi = 10.0}
"""
N_TINY = 2 * (2 * 2 + 2)  # seeds x (synthesizers x regularizer sets + real + scratch)


def expand(preset, sets=None, data_root=None, resolve=None):
    """:func:`benchmarks.jobs.expand` with the fake resolver unless one is given."""
    return jobs_mod.expand(preset, sets, data_root, resolve=resolve or resolve_config)


def real_expand(preset, sets=None, data_root=None):
    return jobs_mod.expand(preset, sets, data_root)


def bench_main(argv: list[str]) -> int:
    """``dfkd bench ARGV`` with the fake job and resolver (the subprocess tests' entry)."""
    import argparse
    import dataclasses

    from benchmarks import cmd_bench
    from benchmarks.cli import run_reporting_errors

    p = argparse.ArgumentParser()
    cmd_bench.add_arguments(p)
    args = p.parse_args(argv)
    args.argv = argv
    o = dataclasses.replace(cmd_bench.options(args), job_fn=FAKE, resolve=resolve_config)
    return run_reporting_errors(lambda _a: run_bench(o, log=lambda m: print(m, flush=True)), args)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Fake jobs and resolver; returns a helper reading the execution counter."""
    counter = tmp_path / "counter.txt"
    monkeypatch.setenv("FAKE_COUNTER", str(counter))
    for var in ("FAKE_SLEEP", "FAKE_FAIL", "FAKE_RAISE", "FAKE_DIE"):
        monkeypatch.delenv(var, raising=False)

    def executions() -> list[str]:
        return [ln.split()[0] for ln in counter.read_text().splitlines()] if counter.exists() else []

    return executions


def write_preset(tmp_path: Path, text: str = TINY, name: str = "tiny.toml") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


#: submitit's debug executor runs the jobs in this process: the runner's logic without the
#: seconds a spawned worker needs to import torch (the local pool has its own tests).
DEBUG = ["executor.submitit.cluster=debug"]


def opts(preset: str, out: Path, **kw) -> BenchOptions:
    kw.setdefault("report", False)
    kw.setdefault("job_fn", FAKE)
    kw.setdefault("resolve", resolve_config)
    return BenchOptions(preset=preset, out=str(out), **kw)


def dbg(preset: str, out: Path, **kw) -> BenchOptions:
    """Options running the jobs in-process (submitit debug executor)."""
    return opts(preset, out, executor="submitit", sets=DEBUG + kw.pop("sets", []), **kw)


# --------------------------------------------------------------------------- expansion
def test_expansion_is_the_cross_product_with_budgets_and_params(tmp_path, fake):
    jobs = expand(load_preset(write_preset(tmp_path)))
    assert len(jobs) == N_TINY
    assert len({j.job_id for j in jobs}) == N_TINY and len({j.label for j in jobs}) == N_TINY
    by = {j.label: j for j in jobs}
    di = by["toy/smallcnn:spiking_smallcnn/deepinversion+stars/seed1"]
    assert di.cfg["deepinversion"]["iterations"] == 5 and di.cfg["distill"]["kd_steps"] == 7
    assert di.cfg["stars"]["alpha"] == 0.4 and di.run["T"] == 2 and di.run["seed"] == 1
    cmi = by["toy/smallcnn:spiking_smallcnn/cmi/seed0"]
    assert cmi.cfg["distill"]["kd_steps"] == 3 and "stars" not in cmi.cfg and "deepinversion" not in cmi.cfg
    sc = by["toy/smallcnn:spiking_smallcnn/scratch/seed0"]
    assert sc.kind == "scratch" and sc.run["synthesizer"] == "scratch" and "real" not in sc.cfg
    # seed-major order: every seed-0 job comes before any seed-1 job
    seeds = [j.run["seed"] for j in jobs]
    assert seeds == sorted(seeds)
    # the cost model: overhead + epochs * (synth_batches * synth_batch_s + kd_steps * kd_step_s) + evals * eval_s
    c = cost_model(load_preset(write_preset(tmp_path)))
    assert by["toy/smallcnn:spiking_smallcnn/deepinversion/seed0"].est_seconds == pytest.approx(
        c["overhead_s"] + 1 * (30.0 + 7 * 2.0) + 1 * c["eval_s"])


def test_job_id_ignores_machine_keys_but_not_budgets(tmp_path, fake):
    p = load_preset(write_preset(tmp_path))
    a = {j.label: j.job_id for j in expand(p)}
    assert a == {j.label: j.job_id for j in expand(p, data_root=str(tmp_path))}
    b = {j.label: j.job_id for j in expand(p, sets=["distill.epochs=3"])}
    assert all(a[k] != b[k] for k in a)


def test_duplicate_cells_are_merged(tmp_path, fake):
    text = TINY.replace('synthesizers = ["deepinversion", "cmi"]', 'synthesizers = ["deepinversion", "real"]')
    jobs = expand(load_preset(write_preset(tmp_path, text)))
    # real as a synthesizer (with and without stars) + real as a reference (= real without stars)
    assert len(jobs) == 2 * (2 * 2 + 2 - 1)


def test_only_filters_by_label(tmp_path, fake):
    jobs = expand(load_preset(write_preset(tmp_path)))
    assert [j.label for j in filter_jobs(jobs, ["*/deepinversion*/seed0"])] == [
        "toy/smallcnn:spiking_smallcnn/deepinversion/seed0", "toy/smallcnn:spiking_smallcnn/deepinversion+stars/seed0"]
    assert len(filter_jobs(jobs, ["*+stars/*"])) == 4
    assert len(filter_jobs(jobs, ["*/cmi/*,*/scratch/*"])) == 4
    with pytest.raises(ConfigError, match="matches none"):
        run_bench(opts(write_preset(tmp_path), tmp_path / "o", only=["*/nothing/*"]), log=lambda m: None)


def test_dry_run_lists_jobs_with_estimated_cost_and_runs_nothing(tmp_path, fake):
    lines = []
    rc = run_bench(opts(write_preset(tmp_path), tmp_path / "out", dry_run=True, workers=2), log=lines.append)
    text = "\n".join(lines)
    assert rc == 0
    assert "toy/smallcnn:spiking_smallcnn/deepinversion+stars/seed1" in text
    assert "est. cost" in text and "estimated cost" in text and "cost model" in text
    assert f"{N_TINY} job(s)" in text and "pending" in text
    assert fake() == [] and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- bad input
def test_unknown_preset_name_lists_known_presets_and_closest():
    with pytest.raises(UnknownNameError) as e:
        load_preset("quik")
    msg = str(e.value)
    assert "Did you mean 'quick'" in msg and "paper" in msg and "standard" in msg
    with pytest.raises(ConfigError, match="not found"):
        load_preset("/no/such/preset.toml")


@pytest.mark.parametrize("old,new,closest", [
    ("seeds = [0, 1]", "seed = [0, 1]", "seeds"),
    ("[distill]\nepochs = 1", "[distil]\nepochs = 1", "distill"),
    ("distill = {kd_steps = 7}", "distil = {kd_steps = 7}", "distill"),
    ("[params.stars]", "[params.starz]", "stars"),
    ('synthesizers = ["deepinversion", "cmi"]', 'synthesizers = ["deepinversio", "cmi"]', "deepinversion"),
    ('pairs = ["smallcnn:spiking_smallcnn"]', 'pairs = ["smallcnn:spiking_smalcnn"]', "spiking_smallcnn"),
    ('references = ["teacher", "real", "scratch"]', 'references = ["teacher", "reel"]', "real"),
])
def test_unknown_key_or_name_in_preset_file(tmp_path, fake, old, new, closest):
    assert old in TINY
    with pytest.raises(UnknownNameError) as e:
        load_preset(write_preset(tmp_path, TINY.replace(old, new)))
    assert f"Did you mean {closest!r}" in str(e.value)


def test_unknown_key_in_a_config_section_fails_at_expansion(tmp_path, fake):
    p = load_preset(write_preset(tmp_path, TINY.replace("epochs = 1", "epochz = 1")))
    with pytest.raises(UnknownNameError, match="Did you mean 'epochs'"):
        expand(p)


def test_set_overrides_and_their_errors(tmp_path, fake):
    p = load_preset(write_preset(tmp_path))
    jobs = expand(p, sets=["deepinversion.iterations=9", "distill.epochs=2"])
    for j in jobs:
        assert j.cfg["distill"]["epochs"] == 2
        if j.run["synthesizer"] == "deepinversion":
            assert j.cfg["deepinversion"]["iterations"] == 9
        else:
            assert "deepinversion" not in j.cfg  # --set only reaches jobs that have the section
    with pytest.raises(ConfigError, match="per job"):
        expand(p, sets=["run.seed=3"])
    with pytest.raises(ConfigError, match="matches no section"):
        expand(p, sets=["fast.k=3"])


def test_stars_params_file_is_merged(tmp_path, fake):
    f = tmp_path / "best.toml"
    f.write_text("[stars]\nbeta = 0.25\n")
    jobs = expand(load_preset(write_preset(tmp_path), params_file=str(f)))
    stars = [j for j in jobs if "stars" in j.run["regularizers"]]
    assert stars and all(j.cfg["stars"] == {"alpha": 0.4, "beta": 0.25} for j in stars)
    f.write_text("[starz]\nbeta = 0.25\n")
    with pytest.raises(UnknownNameError, match="Did you mean 'stars'"):
        load_preset(write_preset(tmp_path), params_file=str(f))


def test_unknown_executor_and_missing_ray(tmp_path, fake):
    with pytest.raises(UnknownNameError, match="Did you mean 'local'"):
        run_bench(opts(write_preset(tmp_path), tmp_path / "o", executor="locall"), log=lambda m: None)
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"pip install 'stars-dfkd\[ray\]'"):
            run_bench(opts(write_preset(tmp_path), tmp_path / "o", executor="ray"), log=lambda m: None)
    assert fake() == []


def test_dataset_without_files_fails_before_compute(tmp_path, fake, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("DFKD_DATA_ROOT", str(empty))
    text = TINY.replace('datasets = ["toy"]', 'datasets = ["cifar10"]')
    with pytest.raises(DataError) as e:
        run_bench(opts(write_preset(tmp_path, text), tmp_path / "out", data_root=str(empty)), log=lambda m: None)
    msg = str(e.value)
    assert "cifar10" in msg and "nothing was run" in msg and "--data-root" in msg and str(empty) in msg
    assert fake() == [] and not (tmp_path / "out" / "rows").exists()


# --------------------------------------------------------------------------- rows, resume, retry
def test_run_writes_one_row_per_job_and_skips_finished_rows(tmp_path, fake):
    preset, out = write_preset(tmp_path), tmp_path / "out"
    assert run_bench(dbg(preset, out), log=lambda m: None) == 0
    rows = read_rows(out)
    jobs = expand(load_preset(preset))
    assert set(rows) == {j.job_id for j in jobs}
    assert sorted(fake()) == sorted(j.job_id for j in jobs)
    r = rows[jobs[0].job_id]
    assert r["job_label"] == jobs[0].label and r["rows_schema"] == ROWS_SCHEMA and r["status"] == "ok"
    man = json.loads((out / "manifest.json").read_text())
    assert man["rows_schema"] == ROWS_SCHEMA and set(man["jobs"]) == set(rows)
    assert man["code"]["version"] == code_version()["version"]
    # re-running computes nothing; adding a seed (a superset) runs only the new jobs
    assert run_bench(dbg(preset, out), log=lambda m: None) == 0
    assert len(fake()) == N_TINY
    more = write_preset(tmp_path, TINY.replace("seeds = [0, 1]", "seeds = [0, 1, 2]"))
    assert run_bench(dbg(more, out), log=lambda m: None) == 0
    assert len(fake()) == N_TINY + N_TINY // 2


def test_seeds_option_adds_seeds_and_rows_of_other_seeds_stay_in_the_table(tmp_path, fake):
    preset, out = write_preset(tmp_path), tmp_path / "out"
    assert run_bench(dbg(preset, out), log=lambda m: None) == 0
    assert run_bench(dbg(preset, out, seeds=parse_seeds("0-2")), log=lambda m: None) == 0
    assert len(fake()) == N_TINY + N_TINY // 2  # only seed 2 ran
    man = json.loads((out / "manifest.json").read_text())
    assert man["preset"]["data"]["bench"]["seeds"] == [0, 1, 2] and len(read_rows(out)) == N_TINY + N_TINY // 2
    # the preset's own seeds (0, 1) and --seeds 3 accept the directory: seed-2 rows are the same cells
    assert run_bench(dbg(preset, out), log=lambda m: None) == 0
    assert run_bench(dbg(preset, out, seeds=[3], only=["*/cmi/*"]), log=lambda m: None) == 0
    assert len(fake()) == N_TINY + N_TINY // 2 + 1
    man = json.loads((out / "manifest.json").read_text())  # the manifest lists every seed the rows hold
    assert man["preset"]["data"]["bench"]["seeds"] == [0, 1, 2, 3]
    # a changed budget is still another configuration, whatever the seeds
    with pytest.raises(ConfigError, match="different configuration"):
        run_bench(dbg(preset, out, seeds=[0], sets=["distill.epochs=3"]), log=lambda m: None)
    assert parse_seeds("0-4,7") == [0, 1, 2, 3, 4, 7] and parse_seeds(" 5 ") == [5]
    for bad in ("4-1", "x", "-1", "1,,2"):
        with pytest.raises(ConfigError, match="--seeds 0-6"):
            parse_seeds(bad)
    with pytest.raises(SystemExit):  # the CLI refuses it before any work (argparse: usage + message, exit 2)
        bench_main(["--preset", preset, "--out", str(out), "--seeds", "4-1"])
    assert bench_main(["--preset", preset, "--out", str(out), "--seeds", "0-3", "--only", "*/cmi/*"]) == 0
    assert len(fake()) == N_TINY + N_TINY // 2 + 1  # cmi at seeds 0-3 all have rows: nothing ran


def test_failed_jobs_do_not_stop_others_and_retry_failed_reruns_only_them(tmp_path, fake, monkeypatch):
    preset, out = write_preset(tmp_path), tmp_path / "out"
    monkeypatch.setenv("FAKE_FAIL", "cmi")  # returns a failed row
    monkeypatch.setenv("FAKE_RAISE", "scratch")  # raises
    log = []
    assert run_bench(dbg(preset, out), log=log.append) == 1
    rows = read_rows(out)
    assert len(rows) == N_TINY
    failed = {k: r for k, r in rows.items() if r["status"] == "failed"}
    assert {r["synthesizer"] for r in failed.values()} == {"cmi", "scratch"} and len(failed) == 6
    assert all("fake NaN" in r["error"] for r in failed.values() if r["synthesizer"] == "cmi")
    scratch = [r for r in failed.values() if r["synthesizer"] == "scratch"]
    assert all("RuntimeError: fake crash in scratch" in r["error"] and r["seed"] in (0, 1) for r in scratch)
    assert any("--retry-failed" in m for m in log)
    n = len(fake())
    assert run_bench(dbg(preset, out), log=lambda m: None) == 1  # failed rows are skipped too
    assert len(fake()) == n
    monkeypatch.delenv("FAKE_FAIL")
    monkeypatch.delenv("FAKE_RAISE")
    assert run_bench(dbg(preset, out, retry_failed=True), log=lambda m: None) == 0
    rerun = fake()[n:]
    assert sorted(rerun) == sorted(failed)  # exactly the failed jobs, once each
    assert all(r["status"] == "ok" for r in read_rows(out).values())


def test_out_dir_of_another_config_schema_or_version_is_refused(tmp_path, fake, monkeypatch):
    preset, out = write_preset(tmp_path), tmp_path / "out"
    assert run_bench(dbg(preset, out), log=lambda m: None) == 0
    n = len(fake())
    with pytest.raises(ConfigError, match="different configuration") as e:
        run_bench(dbg(preset, out, sets=["distill.epochs=3"]), log=lambda m: None)
    assert "--out" in str(e.value)
    man_path = out / "manifest.json"
    man = json.loads(man_path.read_text())
    for key, val, match in (("rows_schema", 999, "schema"), ("code", {"version": "0.0.1"}, "0.0.1")):
        bad = copy.deepcopy(man)
        bad[key] = val
        man_path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=match):
            run_bench(dbg(preset, out), log=lambda m: None)
    man_path.unlink()
    with pytest.raises(ConfigError, match="no manifest"):
        run_bench(dbg(preset, out), log=lambda m: None)
    assert len(fake()) == n  # nothing was computed by any refused run


def _bench_cmd(preset: str, out: Path, *extra: str) -> list[str]:
    argv = ["--preset", preset, "--out", str(out), "--no-report", *extra]
    return [sys.executable, "-c", f"import sys, test_runner; sys.exit(test_runner.bench_main({argv!r}))"]


def _env(counter: Path, **kw: str) -> dict[str, str]:
    env = dict(os.environ, **{"FAKE_COUNTER": str(counter), **kw})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO), env.get("PYTHONPATH", "")])
    for var in ("FAKE_FAIL", "FAKE_RAISE", "FAKE_DIE"):
        env.pop(var, None)
    return env


def test_killed_benchmark_resumes_without_losing_or_duplicating_rows(tmp_path):
    preset, out, counter = write_preset(tmp_path), tmp_path / "out", tmp_path / "counter.txt"
    proc = subprocess.Popen(_bench_cmd(preset, out), env=_env(counter, FAKE_SLEEP="0.6"), cwd=tmp_path,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    rows_dir = out / "rows"
    deadline = time.time() + 120
    while time.time() < deadline and not list(rows_dir.glob("*.json")):
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole benchmark, workers included
    proc.wait()
    done_at_kill = {p.stem for p in rows_dir.glob("*.json")}
    assert 1 <= len(done_at_kill) < N_TINY
    # resume (in-process debug executor: the resume logic is the runner's, not the pool's)
    res = subprocess.run(_bench_cmd(preset, out, "--executor", "submitit", "--set", DEBUG[0]), env=_env(counter),
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    ids = {j.job_id for j in expand(load_preset(preset))}
    files = [p for p in rows_dir.iterdir()]
    assert sorted(p.stem for p in files) == sorted(ids)  # one row per job, no temp files left
    runs = [ln.split()[0] for ln in counter.read_text().splitlines()]
    for jid in ids:
        assert runs.count(jid) >= 1
        if jid in done_at_kill:
            assert runs.count(jid) == 1  # finished before the kill: not recomputed
    assert sum(runs.count(j) - 1 for j in ids) <= 1  # at most the job in flight ran twice
    assert all(json.loads(p.read_text())["status"] == "ok" for p in files)


# --------------------------------------------------------------------------- executors
def _specs(tmp_path: Path, fake_env: bool = True) -> list[dict]:
    jobs = expand(load_preset(write_preset(tmp_path)))
    return [executors.job_spec(j, tmp_path / "out", job_fn=FAKE) for j in jobs]


def test_local_executor_two_workers_runs_jobs_in_parallel_processes(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "0.3")
    specs = _specs(tmp_path)[:4]
    assert all(pickle.loads(pickle.dumps(s)) == s for s in specs)  # names and dicts only
    done = []
    res = executors.run_jobs(specs, "local", workers=2, out=tmp_path / "out", on_done=done.append)
    assert len(res) == len(done) == 4 and all(r["status"] == "ok" for r in res)
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 4
    assert len({r["pid"] for r in rows.values()}) == 2 and os.getpid() not in {r["pid"] for r in rows.values()}
    assert all(r["threads"] == max(1, executors.cpu_count() // 2) for r in rows.values())


def test_local_executor_survives_a_dying_worker(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_DIE", "cmi")
    by_label = {s["label"].split("/", 2)[2]: s for s in _specs(tmp_path)}
    specs = [by_label[k] for k in ("deepinversion/seed0", "cmi/seed0", "real/seed0")]
    res = executors.run_jobs(specs, "local", workers=1, out=tmp_path / "out")
    by = {r["label"]: r for r in res}
    assert len(by) == len(specs)
    for label, r in by.items():
        if "/cmi" in label:
            assert r["status"] == "failed" and "worker process died" in r["error"]
        else:
            assert r["status"] == "ok", r
    assert len(read_rows(tmp_path / "out")) == len(specs)


@pytest.mark.slow
def test_local_executor_isolates_the_culprit_when_several_jobs_were_running(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_DIE", "cmi")
    monkeypatch.setenv("FAKE_SLEEP", "1.0")
    by_label = {s["label"].split("/", 2)[2]: s for s in _specs(tmp_path)}
    # the dying job may run next to an innocent one: both are suspects, re-run one at a time
    specs = [by_label[k] for k in ("deepinversion/seed0", "cmi/seed0", "real/seed0", "scratch/seed0")]
    res = executors.run_jobs(specs, "local", workers=2, out=tmp_path / "out")
    by = {r["label"].split("/", 2)[2]: r for r in res}
    assert len(by) == 4 and by["cmi/seed0"]["status"] == "failed"
    assert all(by[k]["status"] == "ok" for k in ("deepinversion/seed0", "real/seed0", "scratch/seed0"))


def test_submitit_debug_executor_runs_a_fake_job(tmp_path, fake):
    pytest.importorskip("submitit")
    spec = _specs(tmp_path)[0]
    res = executors.run_jobs([spec], "submitit", options={"cluster": "debug"}, out=tmp_path / "out")
    assert res[0]["status"] == "ok"
    row = read_rows(tmp_path / "out")[spec["job_id"]]
    assert row["job_label"] == spec["label"] and row["student_acc"] == 50.0
    assert (tmp_path / "out" / "submitit").is_dir()


def test_ray_executor_on_a_local_instance(tmp_path, fake):
    ray = pytest.importorskip("ray", reason="ray is an optional extra (pip install 'stars-dfkd[ray]')")
    try:
        res = executors.run_jobs(_specs(tmp_path)[:2], "ray", options={"num_cpus": 2}, out=tmp_path / "out")
    finally:
        ray.shutdown()
    assert [r["status"] for r in res] == ["ok", "ok"]


# --------------------------------------------------------------------------- shipped presets
def test_shipped_presets_validate_and_expand(fake):
    counts = {}
    for name in ("quick", "standard", "paper"):
        p = load_preset(name)
        b = p.bench
        refs = [r for r in b["references"] if r != "teacher"]
        expected = len(b["seeds"]) * len(b["datasets"]) * len(b["pairs"]) * (
            len(b["synthesizers"]) * len(b["regularizer_sets"]) + len(refs))
        counts[name] = len(expand(p))
        assert counts[name] == expected, name
    paper = load_preset("paper").bench
    assert set(paper["datasets"]) == {"cifar10", "cifar100", "tiny-imagenet"}
    assert set(paper["pairs"]) == {"resnet18:spiking_resnet18", "vgg16:spiking_vgg11", "mobilenetv2:spiking_mobilenet"}
    assert load_preset("quick").bench["datasets"] == ["fashion-mnist-28"]
    evidence = load_preset("evidence").bench
    assert len(evidence["seeds"]) >= 5 and evidence["treatment"] == ["stars"]


# --------------------------------------------------------------------------- integration (real jobs)
def _real_modules_ok() -> bool:
    try:
        from benchmarks.job import resolve_config as real_resolve

        real_resolve({"run": {"synthesizer": "fast", "regularizers": ["stars"]}})
        return True
    except Exception:  # noqa: BLE001 - the modules of the other parts are not there yet
        return False


needs_real = pytest.mark.skipif(not _real_modules_ok(), reason="benchmarks.job / synthesizers / stars not importable")


@needs_real
def test_quick_preset_resolves_with_the_real_config(monkeypatch):
    p = load_preset("quick")
    jobs = real_expand(p)
    assert len(jobs) == 9 and all(j.job_id == job_id_of(j.cfg) for j in jobs)
    by = {j.label.split("/", 2)[2]: j for j in jobs}
    di = by["deepinversion+stars/seed0"]
    assert di.cfg["deepinversion"]["iterations"] == p.data["budget"]["deepinversion"]["deepinversion"]["iterations"]
    assert "alpha" in di.cfg["stars"] and "stars" not in by["deepinversion/seed0"].cfg
    assert by["fast/seed0"].cfg["distill"]["synth_batches"] == p.data["budget"]["fast"]["distill"]["synth_batches"]
    assert by["cmi/seed0"].cfg["distill"]["synth_batches"] == p.data["distill"]["synth_batches"]
    assert by["scratch/seed0"].kind == "scratch" and by["scratch/seed0"].cfg["distill"] == by["real/seed0"].cfg["distill"]


@pytest.mark.slow
@needs_real
def test_shipped_presets_resolve_with_the_real_config(monkeypatch):
    for name in preset_names():  # every shipped preset, so a new one cannot be missed
        jobs = real_expand(load_preset(name))
        assert jobs and all(j.job_id == job_id_of(j.cfg) for j in jobs)
    bad = load_preset("quick")
    bad.data["distill"] = {"epochz": 1}
    with pytest.raises(UnknownNameError, match="Did you mean 'epochs'"):
        real_expand(bad)


@needs_real
def test_evidence_field_shares_evidence_references_and_kd_budget():
    """evidence-field's table sits beside evidence's: its real / noise jobs are the same jobs
    (same ids, so copied rows are reused) and every method gets evidence's KD steps and batch."""
    ev = {j.label: j for j in real_expand(load_preset("evidence"))}
    field = real_expand(load_preset("evidence-field"))
    refs = [j for j in field if j.cfg["run"]["synthesizer"] in ("real", "noise")]
    assert refs and all(j.label in ev and ev[j.label].job_id == j.job_id for j in refs)
    kd = lambda c: c["distill"]["epochs"] * c["distill"]["kd_steps"]  # noqa: E731
    want = kd(load_preset("evidence").data)
    for j in field:
        assert j.cfg["distill"]["batch_size"] == load_preset("evidence").data["distill"]["batch_size"], j.label
        if j.cfg["run"]["synthesizer"] in ("dafl", "zskt", "dfad", "dfq"):  # no warm-up: every round trains
            assert kd(j.cfg) == want, j.label


@needs_real
def test_stars_ablation_reuses_evidence_rows_and_its_seedtar_cell_differs_only_in_tar():
    """stars-ablation's none / stars / reference jobs are evidence's (same ids: copied rows are
    reused), and its fifth set, stars-seedtar, resolves to the stars job's config with the
    seed's literal TAR and nothing else changed."""
    ev = {j.label: j for j in real_expand(load_preset("evidence"))}
    ab = {j.label: j for j in real_expand(load_preset("stars-ablation"))}
    shared = [lbl for lbl in ab if lbl in ev]
    assert len(shared) == len(ev) and all(ab[lbl].job_id == ev[lbl].job_id for lbl in shared)
    sets = {tuple(j.cfg["run"]["regularizers"]) for j in ab.values()}
    assert sets == {(), ("stars",), ("rca",), ("tar",), ("stars-seedtar",)}
    for lbl, j in ab.items():
        if "+stars-seedtar/" not in lbl:
            continue
        stars = ab[lbl.replace("+stars-seedtar/", "+stars/")].cfg
        assert j.cfg["stars-seedtar"] == {**stars["stars"], "tar_variant": "seed"}, lbl
        assert stars["stars"]["tar_variant"] == "aligned"
        rest = lambda c: {k: v for k, v in c.items() if k not in ("stars", "stars-seedtar", "run")}  # noqa: E731
        assert rest(j.cfg) == rest(stars), lbl
        run = lambda c: {k: v for k, v in c["run"].items() if k != "regularizers"}  # noqa: E731
        assert run(j.cfg) == run(stars), lbl


def pair_variant_jobs(base: str, variant: str, changed: tuple[str, ...]) -> dict[str, tuple[dict, dict]]:
    """{label: (base cfg, variant cfg)} of two presets whose jobs must differ only in the
    ``changed`` distill keys: same labels, every other resolved key equal, other job ids."""
    ev = {j.label: j for j in real_expand(load_preset(base))}
    var = {j.label: j for j in real_expand(load_preset(variant))}
    assert var.keys() == ev.keys()
    strip = lambda c: {**c, "distill": {k: v for k, v in c["distill"].items() if k not in changed}}  # noqa: E731
    for lbl, j in var.items():
        assert strip(j.cfg) == strip(ev[lbl].cfg), lbl
        assert j.job_id != ev[lbl].job_id
    return {lbl: (ev[lbl].cfg, j.cfg) for lbl, j in var.items()}


@needs_real
def test_evidence_kd2x_is_evidence_with_twice_the_kd_steps_and_nothing_else():
    """evidence-kd2x measures one lever, the KD steps: each of its jobs is evidence's job of the
    same label with distill.kd_steps doubled and accuracy every second epoch, every other
    resolved key equal."""
    for lbl, (a, b) in pair_variant_jobs("evidence", "evidence-kd2x", ("kd_steps", "eval_every")).items():
        assert b["distill"]["kd_steps"] == 2 * a["distill"]["kd_steps"] and b["distill"]["eval_every"] == 2, lbl


@needs_real
@pytest.mark.parametrize("variant, base, probes", [
    ("evidence-lr", "evidence", {"cmi/seed0": "cmi-lr0.1", "real/seed0": "real-lr0.1"}),
    ("evidence-kd2x-lr", "evidence-kd2x", {"fast/seed0": "fast-120kd-lr0.1"}),
])
def test_lr_variant_is_its_base_at_kd_lr_0_1_and_reuses_the_probe_rows(variant, base, probes):
    """evidence-lr (evidence-kd2x-lr) measures one lever, the KD learning rate: each job is
    evidence's (evidence-kd2x's) job of the same label with distill.lr 0.1, every other resolved
    key equal; so its seed-0 probe jobs are the session-13 lr-0.1 probes
    (results/budget-curves/*lr0.1), whose rows it reuses."""
    pairs = pair_variant_jobs(base, variant, ("lr",))
    for lbl, (a, b) in pairs.items():
        assert a["distill"]["lr"] == 0.05 and b["distill"]["lr"] == 0.1, lbl
    root = REPO / "results" / "budget-curves"
    for lbl, probe in probes.items():
        (cfg,) = [b for k, (_, b) in pairs.items() if k.endswith("/" + lbl)]
        job_id = job_id_of(cfg)
        assert (root / probe / "rows" / f"{job_id}.json").is_file(), (lbl, job_id)


def test_extends_merges_the_base_under_the_variant_and_rejects_cycles(tmp_path):
    """A preset file with extends = BASE is BASE's tables deep-merged under its own: the keys it
    sets win, the rest are BASE's, the name is its own; a base may be a file next to it, and a
    cycle of extends is a ConfigError that names it."""
    base = load_preset("evidence").data
    (tmp_path / "v.toml").write_text('extends = "evidence"\n[distill]\nlr = 0.2\n')
    v = load_preset(str(tmp_path / "v.toml"))
    assert v.name == "v" and v.data["distill"]["lr"] == 0.2
    assert {**v.data["distill"], "lr": base["distill"]["lr"]} == base["distill"]
    assert v.data["budget"] == base["budget"] and v.data["bench"]["seeds"] == base["bench"]["seeds"]
    (tmp_path / "w.toml").write_text('extends = "v.toml"\n[bench]\nseeds = [7]\n')
    w = load_preset(str(tmp_path / "w.toml"))
    assert w.data["distill"]["lr"] == 0.2 and w.data["bench"]["seeds"] == [7]
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ConfigError, match="cycle"):
        load_preset(str(tmp_path / "a.toml"))
    (tmp_path / "u.toml").write_text('extends = "evidance"\n')
    with pytest.raises(UnknownNameError, match="evidence"):
        load_preset(str(tmp_path / "u.toml"))


def write_cifar10(root: Path, per_batch: int = 10, n_test: int = 20) -> None:
    """Tiny files in torchvision's CIFAR-10 layout (random pixels, labels 0..9)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        blob = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"labels": [int(x) for x in np.arange(n) % 10]}
        with open(d / name, "wb") as fh:
            pickle.dump(blob, fh)


SMOKE_SETS = ["run.teacher_epochs=1", "run.device=cpu", "run.val_size=0", "distill.epochs=1", "distill.kd_steps=1",
              "distill.batch_size=4", "distill.synth_batches=1", "distill.eval_batch_size=20",
              "fast.batch_size=4", "fast.steps=1", "fast.ngf=8", "fast.nz=16"]


@pytest.mark.slow
@needs_real
def test_paper_preset_one_step_smoke_run_on_cifar_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("DFKD_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    write_cifar10(root)
    out = tmp_path / "paper"
    only = ["cifar10/resnet18:spiking_resnet18/fast/seed0", "cifar10/resnet18:spiking_resnet18/fast+stars/seed0"]
    log = []
    rc = run_bench(BenchOptions(preset="paper", out=str(out), only=only, sets=SMOKE_SETS + ["run.metrics_images=4"],
                                data_root=str(root), workers=2), log=log.append)
    rows = read_rows(out)
    assert len(rows) == 2, log
    assert rc == 0, [r.get("error") for r in rows.values()]
    for r in rows.values():
        assert r["dataset"] == "cifar10" and r["status"] == "ok" and 0.0 <= r["student_acc"] <= 100.0
    assert (out / "leaderboard.md").is_file() and (out / "results.csv").is_file()
    assert "cifar10" in (out / "leaderboard.md").read_text()


# --------------------------------------------------------------------------- the scratch reference
def _scratch_cfg(**distill) -> dict:
    from benchmarks.job import resolve_config as real_resolve

    cfg = real_resolve({"run": {"dataset": "toy", "teacher": "smallcnn", "student": "spiking_smallcnn", "T": 2,
                                "synthesizer": "real", "device": "cpu", "metrics_images": 8, "test_subset": 64},
                        "distill": {"epochs": 2, "kd_steps": 3, "batch_size": 16, "eval_batch_size": 64, **distill}})
    cfg["run"]["synthesizer"] = "scratch"
    cfg.pop("real")
    return cfg


@needs_real
def test_scratch_trains_for_as_many_steps_as_kd_and_is_deterministic(monkeypatch):
    import torch

    steps = []
    orig = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **k: (steps.append(1), orig(self, *a, **k))[1])
    cfg = _scratch_cfg()
    a = run_scratch(cfg)
    assert a["status"] == "ok", a.get("error")
    assert len(steps) == 2 * 3  # epochs * kd_steps
    assert a["synthesizer"] == "scratch" and a["images_synthesized"] == 0 and 0 <= a["student_acc"] <= 100
    assert [h["epoch"] for h in a["history"]] == [0, 1] and a["firing_rate"] is not None
    b = run_scratch(cfg)
    assert b["student_acc"] == a["student_acc"] and b["history"][-1]["ce_loss"] == a["history"][-1]["ce_loss"]


@needs_real
def test_scratch_failure_is_a_failed_row():
    cfg = _scratch_cfg()
    cfg["distill"]["lr"] = 1e30  # past the config check: the loss must diverge
    row = run_scratch(cfg)
    assert row["status"] == "failed" and "NonFiniteLossError" in row["error"] and row["synthesizer"] == "scratch"


def test_a_preset_may_carry_a_tune_table_for_dfkd_tune(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text('[bench]\ndatasets = ["toy"]\npairs = ["smallcnn:spiking_smallcnn"]\n'
                 'synthesizers = ["noise"]\n[tune]\nalpha = [0.1, 0.9]\n')
    # not rejected as an unknown top-level table, and kept for dfkd tune
    assert load_preset(str(p)).data["tune"] == {"alpha": [0.1, 0.9]}


def test_teacher_seed_shares_one_teacher_across_seeds():
    """run.teacher_seed pins the teacher: seeds then vary only synthesis and KD."""
    from benchmarks.job import resolve_config, teacher_seed
    from benchmarks.jobs import teacher_keys

    def three_seeds():
        p = load_preset("quick")
        p.bench["seeds"] = [0, 1, 2]
        return p

    jobs = expand(three_seeds(), sets=["run.teacher_seed=0"], resolve=resolve_config)
    jobs_seeds = expand(three_seeds(), resolve=resolve_config)
    assert {j.run["seed"] for j in jobs} == {0, 1, 2}  # the check is not vacuous
    assert {teacher_seed(j.run) for j in jobs} == {0}
    assert len(teacher_keys(jobs)) == 1
    # without it, the teacher follows each job's seed
    assert all(teacher_seed(j.run) == j.run["seed"] for j in jobs_seeds)
    assert len(teacher_keys(jobs_seeds)) == 3


def test_teacher_log_names_the_teacher_seed_not_the_job_seed(monkeypatch):
    """A preset with one teacher (run.teacher_seed = 0) logs that teacher as seed 0 for a
    seed-9 job (it said "seed 9", which reads as a second teacher)."""
    from benchmarks import preflight, teachers
    from benchmarks.jobs import Job

    seeds = []
    monkeypatch.setattr(teachers, "get_teacher",
                        lambda *a, seed, **k: (seeds.append(seed), (None, {"cached": True, "test_acc": 90.0}))[1])
    run = {"dataset": "fashion-mnist-28", "teacher": "smallcnn", "seed": 9, "teacher_seed": 0, "device": "cpu"}
    lines: list[str] = []
    preflight.prepare_teachers([Job("j", "l", "distill", {"run": run})], log=lines.append,
                               bundles={preflight.data_key(run): object()})
    assert seeds == [0]
    assert all("seed 0:" in line and "seed 9" not in line for line in lines) and len(lines) == 2


def test_teacher_log_says_on_how_many_test_images_its_accuracy_was_measured(monkeypatch):
    """The cached accuracy is the one measured when the teacher was trained: on all 10,000
    test images by `dfkd train-teacher`, on the preset's test subset by `dfkd bench`; the same
    weights read 81.32% and 82.10% (session 23), so the log line names the test set's size."""
    from benchmarks import preflight, teachers
    from benchmarks.jobs import Job

    monkeypatch.setattr(teachers, "get_teacher",
                        lambda *a, **k: (None, {"cached": True, "test_acc": 81.32, "n_test": 10000}))
    run = {"dataset": "fashion-mnist-28", "teacher": "smallcnn", "seed": 0, "device": "cpu"}
    lines: list[str] = []
    preflight.prepare_teachers([Job("j", "l", "distill", {"run": run})], log=lines.append,
                               bundles={preflight.data_key(run): object()})
    assert lines[-1].endswith("test accuracy 81.32% on 10,000 test images")
