"""Long jobs (issue 14): job.log, TensorBoard events, checkpoint/resume with identical
numbers, run.precision, and the row's new fields (flags, student_checkpoint, data_shape)."""
import copy
import json

import pytest
import torch

from benchmarks.job import config_hash, resolve_config, run_job
from benchmarks.longjob import CHECKPOINT, LOG


@pytest.fixture(scope="module", autouse=True)
def env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DFKD_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def tiny(epochs=3, synth="deepinversion", **run):
    r = dict(dataset="toy", teacher="smallcnn", teacher_epochs=1, student="spiking_smallcnn", T=2,
             synthesizer=synth, device="cpu", metrics_images=16, train_subset=128, test_subset=32)
    r.update(run)
    cfg = {"run": r, "distill": {"epochs": epochs, "kd_steps": 2, "batch_size": 16, "eval_batch_size": 64}}
    if synth == "deepinversion":
        cfg["deepinversion"] = {"batch_size": 16, "iterations": 2}
    return cfg


class Stop(KeyboardInterrupt):
    pass


def stop_at(k):
    def on_eval(epoch, metrics):
        if epoch == k:
            raise Stop
    return on_eval


def _student(d):
    return torch.load(d / "student.pt", weights_only=True)


@pytest.mark.parametrize("synth", ["deepinversion", "fast", "deepinversion+stars"])
def test_a_killed_job_resumes_to_the_same_numbers(tmp_path, synth):
    synth, _, reg = synth.partition("+")
    cfg = tiny(synth=synth, **({"regularizers": [reg]} if reg else {}))
    if synth == "fast":
        cfg["fast"] = {"batch_size": 16, "warmup": 1, "steps": 2}
    if reg:  # TAR on sampled sites: the regularizer's own random stream must resume too
        cfg[reg] = {"tar_positions": 8}
    full = run_job(copy.deepcopy(cfg), str(tmp_path / "full"))
    assert full["status"] == "ok" and full["resumed_from_epoch"] is None
    assert not (tmp_path / "full" / CHECKPOINT).exists()  # deleted when the job ends ok
    part = tmp_path / "part"
    with pytest.raises(Stop):
        run_job(copy.deepcopy(cfg), str(part), on_eval=stop_at(1))
    state = torch.load(part / CHECKPOINT, weights_only=False)
    assert state["loop"]["epoch"] == 0 and state["config_hash"] == full["config_hash"]
    again = run_job(copy.deepcopy(cfg), str(part))
    assert again["status"] == "ok" and again["resumed_from_epoch"] == 1
    assert again["student_acc"] == full["student_acc"]
    assert again["history"] == full["history"]
    assert again["images_synthesized"] == full["images_synthesized"]
    assert [b["losses"] for b in again["synth_batches"]] == [b["losses"] for b in full["synth_batches"]]
    a, b = _student(tmp_path / "full"), _student(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = (part / LOG).read_text()
    assert "resuming after epoch 1/3" in log and "interrupted" in log and "finished ok" in log


def test_checkpoint_of_another_config_is_ignored_and_kept_on_request(tmp_path):
    cfg = tiny(epochs=2, keep_checkpoint=True, checkpoint_every=2)
    with pytest.raises(Stop):
        run_job(copy.deepcopy(cfg), str(tmp_path), on_eval=stop_at(1))
    assert not (tmp_path / CHECKPOINT).exists()  # every 2 epochs: none yet at epoch 0
    row = run_job(copy.deepcopy(cfg), str(tmp_path))
    assert row["resumed_from_epoch"] is None and (tmp_path / CHECKPOINT).exists()  # kept
    other = tiny(epochs=2, seed=1)
    row = run_job(other, str(tmp_path))
    assert row["status"] == "ok" and row["resumed_from_epoch"] is None
    assert "belongs to another config" in (tmp_path / LOG).read_text()


def test_log_tensorboard_and_row_fields(tmp_path):
    row = run_job(tiny(epochs=2, tensorboard=True), str(tmp_path))
    assert row["status"] == "ok"
    log = (tmp_path / LOG).read_text()
    assert "toy: smallcnn -> spiking_smallcnn" in log and "epoch 2/2" in log and "kd_loss" in log
    assert "test_acc" in log and "firing rate" in log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"kd/loss", "acc/test", "lr", "acc/student_final"} <= tags
    assert any(t.startswith("synth/") for t in tags) and any(t.startswith("spiking/") for t in tags)
    assert len(ea.Scalars("kd/loss")) == 2
    # the row: student saved by default with the data shape, flags, precision
    assert row["student_checkpoint"] == str((tmp_path / "student.pt").resolve())
    assert row["data_shape"] == {"channels": 1, "image_size": 16, "num_classes": 4}
    assert isinstance(row["flags"], list) and row["precision"] == "fp32" and row["teacher_import"] is None
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["data_shape"] == row["data_shape"]
    # dfkd export rebuilds the student from the row's fields, no guessing
    from benchmarks.export import export_run

    path, info = export_run(tmp_path, "torchscript", str(tmp_path / "s.ts"))
    assert (info["in_channels"], info["image_size"], info["num_classes"]) == (1, 16, 4)
    assert torch.jit.load(path)(torch.zeros(2, 1, 16, 16)).shape == (2, 4)


def test_failed_job_logs_its_error(tmp_path):
    cfg = tiny(epochs=1)
    cfg["distill"]["lr"] = 10.0
    cfg["distill"]["temperature"] = 1e-3  # blows up the KD loss
    row = run_job(cfg, str(tmp_path))
    log = (tmp_path / LOG).read_text()
    if row["status"] == "failed":
        assert row["error"] in log and "traceback" in log
    else:
        assert row["flags"]  # finished, but flagged


def test_hash_ignores_the_keys_that_cannot_change_a_result():
    base = resolve_config(tiny())
    h = config_hash(base)
    for key, val in (("tensorboard", True), ("checkpoint_every", 5), ("keep_checkpoint", True),
                     ("save_student", False), ("progress", True)):
        c = copy.deepcopy(base)
        c["run"][key] = val
        assert config_hash(c) == h, key
    c = copy.deepcopy(base)
    c["run"]["precision"] = "bf16"
    assert config_hash(c) != h
    legacy = copy.deepcopy(base)  # a config from before these keys existed hashes the same
    for k in ("precision", "tensorboard", "checkpoint_every", "keep_checkpoint"):
        legacy["run"].pop(k)
    legacy["run"]["save_student"] = False
    assert config_hash(legacy) == h


def test_resolve_canonicalizes_names_and_checks_precision():
    from baselines.errors import ConfigError

    cfg = tiny()
    cfg["run"]["synthesizer"] = "DeepInversion"
    cfg["DEEPINVERSION"] = cfg.pop("deepinversion")
    out = resolve_config(cfg)
    assert out["run"]["synthesizer"] == "deepinversion" and out["deepinversion"]["iterations"] == 2
    with pytest.raises(ConfigError, match="run.precision"):
        resolve_config(tiny(precision="fp8"))


def test_bf16_runs_on_cpu_and_is_recorded(tmp_path):
    row = run_job(tiny(epochs=1, precision="bf16", metrics_images=0), None)
    assert row["status"] == "ok", row["error"]
    assert row["precision"] == "bf16" and row["student_acc"] is not None
    assert row["config_hash"] != config_hash(resolve_config(tiny(epochs=1, metrics_images=0)))


AVX2_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
AVX512_BF16_CPUINFO = "flags\t\t: fpu avx2 avx512f avx512_bf16\n"
ARM_BF16_CPUINFO = "Features\t: fp asimd sve bf16 i8mm\n"


def test_native_bf16_is_read_from_cpuinfo_flags():
    from baselines.precision import cpu_has_native_bf16

    assert cpu_has_native_bf16(AVX2_CPUINFO) is False
    assert cpu_has_native_bf16(AVX512_BF16_CPUINFO) is True
    assert cpu_has_native_bf16(ARM_BF16_CPUINFO) is True
    assert cpu_has_native_bf16("model name : something\n") is None  # no flags line: unknown


@pytest.mark.parametrize("precision,device,cpuinfo,warns", [
    ("bf16", "cpu", AVX2_CPUINFO, True),
    ("bf16", "cpu", AVX512_BF16_CPUINFO, False),
    ("bf16", "cpu", "", False),          # cannot tell: say nothing
    ("fp32", "cpu", AVX2_CPUINFO, False),
    ("bf16", "cuda", AVX2_CPUINFO, False),
])
def test_bf16_on_a_cpu_without_native_bfloat16_is_warned_about(precision, device, cpuinfo, warns):
    from baselines.precision import slow_precision_warning

    msg = slow_precision_warning(precision, device, cpuinfo)
    assert (msg is not None) == warns
    if warns:
        assert "10x slower" in msg and "run.precision = 'fp32'" in msg


def test_a_bf16_job_on_an_emulating_cpu_warns_in_its_log_and_on_stderr(tmp_path, monkeypatch):
    import baselines.precision as P

    real = P.cpu_has_native_bf16
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda cpuinfo=None: real(AVX2_CPUINFO))
    with pytest.warns(UserWarning, match="without native bfloat16"):
        row = run_job(tiny(epochs=1, precision="bf16", metrics_images=0), str(tmp_path))
    assert row["status"] == "ok", row["error"]
    log = (tmp_path / LOG).read_text()
    assert "warning: run.precision = 'bf16' on a CPU without native bfloat16" in log
    fp32 = tmp_path / "fp32"
    run_job(tiny(epochs=1, metrics_images=0), str(fp32))
    assert "warning" not in (fp32 / LOG).read_text()


def test_bench_progress_counts_running_jobs_and_estimates_the_eta(tmp_path):
    from benchmarks.jobs import Job
    from benchmarks.progress import BenchProgress

    now = [0.0]
    jobs = [Job(f"j{i}", f"label{i}", "distill", {}, 10.0 * (i + 1)) for i in range(3)]  # est 10, 20, 30
    dirs = {j.job_id: str(tmp_path / j.job_id) for j in jobs}
    lines = []
    p = BenchProgress(jobs, dirs, interval=0, log=lines.append, clock=lambda: now[0])
    assert p.eta() is None and "0/3 finished" in p.line() and "ETA ?" in p.line()
    (tmp_path / "j0").mkdir()
    (tmp_path / "j0" / "started").write_text("1 0\n")
    (tmp_path / "j1").mkdir()
    (tmp_path / "j1" / "started").write_text("1 0\n")
    assert p.running() == 2 and "2 running, 1 pending" in p.line()
    now[0] = 20.0
    p.done({"job_id": "j0", "status": "ok"})
    p.done({"job_id": "j1", "status": "failed"})
    (tmp_path / "j0" / "started").unlink()
    assert p.running() == 0  # finished jobs never count as running, marker or not
    assert p.eta() == pytest.approx(20.0 * 30 / 30)
    line = p.line()
    assert "2/3 finished (1 ok, 1 failed), 0 running, 1 pending" in line and "ETA 20s" in line
    with BenchProgress(jobs, dirs, interval=0.01, log=lines.append) as q:  # the periodic line
        import time
        time.sleep(0.1)
    assert any(line.startswith("progress:") for line in lines) and q._thread is None


def test_bench_flags_become_run_keys():
    import argparse

    from benchmarks import cmd_bench

    ap = argparse.ArgumentParser()
    cmd_bench.add_arguments(ap)
    opts = cmd_bench.options(ap.parse_args(["--preset", "quick", "--download", "--tensorboard",
                                            "--data-root", "/d", "--set", "distill.epochs=1"]))
    assert opts.sets == ["distill.epochs=1", "run.download=true", "run.tensorboard=true"]
    assert opts.data_root == "/d"


def test_leaderboard_lists_flagged_runs():
    import pandas as pd

    from benchmarks.leaderboard import flagged_table

    df = pd.DataFrame({"status": ["ok", "ok", "failed"], "label": ["a", "b", "c"], "job_id": ["1", "2", "3"],
                       "flags": [None, "kd_loss above bound at epoch 0", "x"]})
    t = flagged_table(df)
    assert list(t["job"]) == ["b"] and "kd_loss" in t["flags"].iloc[0]
