"""Jobs: config resolution (errors before compute), the config hash, result.json, failed
runs that name the bad term, determinism, and pruning passing through."""
import copy
import json
import math
import os
from dataclasses import dataclass

import pytest
import torch

from baselines.config import nonneg
from baselines.errors import ConfigError, UnknownNameError
from baselines.hooks import Regularizer
from baselines.registry import REGULARIZERS
from benchmarks.job import config_hash, default_config, resolve_config, run_job

REQUIRED_KEYS = {
    "run_id", "dataset", "teacher", "student", "T", "synthesizer", "regularizers", "seed", "teacher_acc",
    "student_acc", "student_acc_best", "val_acc", "agreement", "firing_rate", "sops_per_image",
    "images_synthesized", "synthesis_seconds", "distill_seconds", "synth_timing", "synth_losses",
    "diagnostics", "history", "peak_rss_mb", "device", "status", "error", "traceback", "config",
    "config_hash", "git_commit", "versions", "started", "finished",
}


class NaNReg(Regularizer):
    """Test regularizer: a NaN term in the configured phase (or a finite one)."""

    @dataclass
    class Config:
        weight: float = 1.0
        phase: str = "synthesis"
        nan: bool = True

        def validate(self):
            nonneg("test-nan", weight=self.weight)

    def active_phases(self):
        return (self.cfg.phase,)

    def needs_student(self, phase):
        return False

    def terms(self, ctx):
        v = ctx.images.mean() * 0 + (float("nan") if self.cfg.nan else 0.0)
        return {"bad": self.cfg.weight * v}


class NeedsSpiking(Regularizer):
    """Test regularizer whose build-time check rejects ANN students."""

    phases = ("distill",)

    def check_models(self, teacher, student):
        if not student.is_spiking:
            raise ConfigError("test-needs-spiking: the student must be spiking")

    def terms(self, ctx):
        return {}


@pytest.fixture(scope="module", autouse=True)
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DFKD_CACHE", str(cache))
        REGULARIZERS.register("test-nan")(NaNReg)
        REGULARIZERS.register("test-needs-spiking")(NeedsSpiking)
        try:
            yield cache
        finally:
            REGULARIZERS.unregister("test-nan")
            REGULARIZERS.unregister("test-needs-spiking")


def tiny(synth="deepinversion", **run):
    r = dict(dataset="toy", teacher="smallcnn", teacher_epochs=1, student="spiking_smallcnn", T=2,
             synthesizer=synth, device="cpu", metrics_images=16, train_subset=256, test_subset=64)
    r.update(run)
    cfg = {"run": r, "distill": {"epochs": 2, "kd_steps": 2, "batch_size": 16, "eval_batch_size": 64}}
    if synth == "deepinversion":
        cfg["deepinversion"] = {"batch_size": 16, "iterations": 2}
    if synth == "noise":
        cfg["noise"] = {"batch_size": 16}
    return cfg


# ----------------------------------------------------------------------------- resolve
def test_defaults_are_filled_and_resolution_is_idempotent():
    d = default_config()
    assert list(d) == ["run", "distill", "deepinversion"]
    assert d["run"]["dataset"] == "fashion-mnist" and d["run"]["T"] == 4 and d["run"]["regularizers"] == []
    assert d["distill"]["temperature"] == 20.0 and d["distill"]["kd_steps"] == 400
    cfg = resolve_config(tiny(regularizers=["test-nan"]))
    assert cfg["test-nan"] == {"weight": 1.0, "phase": "synthesis", "nan": True}
    assert cfg["deepinversion"]["iterations"] == 2 and cfg["deepinversion"]["bn"] == 10.0
    assert resolve_config(copy.deepcopy(cfg)) == cfg


@pytest.mark.parametrize("mutate, err, words", [
    (lambda c: c["run"].update(synthesizer="deepinverson"), UnknownNameError,
     ["unknown synthesizer 'deepinverson'", "Did you mean 'deepinversion'", "noise", "real"]),
    (lambda c: c["run"].update(regularizers=["test-nann"]), UnknownNameError,
     ["unknown regularizer 'test-nann'", "Did you mean 'test-nan'"]),
    (lambda c: c.update(distil={"epochs": 1}), UnknownNameError,
     ["unknown config section 'distil'", "Did you mean 'distill'", "run"]),
    (lambda c: c["run"].update(sed=1), UnknownNameError, ["key in [run] 'sed'", "Did you mean 'seed'"]),
    (lambda c: c["distill"].update(epoch=1), UnknownNameError, ["'epoch'", "Did you mean 'epochs'"]),
    (lambda c: c["deepinversion"].update(itrations=5), UnknownNameError, ["Did you mean 'iterations'"]),
    (lambda c: c["run"].update(dataset="cifar11"), UnknownNameError, ["unknown dataset 'cifar11'"]),
    (lambda c: c["run"].update(student="spiking_smalcnn"), UnknownNameError, ["Did you mean 'spiking_smallcnn'"]),
    (lambda c: c["run"].update(teacher="resnet43"), UnknownNameError, ["unknown teacher 'resnet43'"]),
    (lambda c: c.update(noise={"batch_size": 3}), ConfigError, ["[noise]", "does not use"]),
    (lambda c: c["deepinversion"].update(bn=-1.0), ConfigError, ["deepinversion.bn = -1.0 is negative"]),
    (lambda c: (c["run"].update(regularizers=["test-nan"]), c.update({"test-nan": {"weight": -0.5}})),
     ConfigError, ["test-nan.weight = -0.5 is negative"]),
    (lambda c: c["run"].update(regularizers=["test-nan", "test-nan"]), ConfigError, ["more than once"]),
    (lambda c: c["run"].update(T=0), ConfigError, ["run.T = 0"]),
    (lambda c: c["run"].update(device="gpu"), ConfigError, ["run.device = 'gpu'"]),
    (lambda c: c["run"].update(seed="one"), ConfigError, ["expected an integer"]),
])
def test_resolve_errors_name_the_problem(mutate, err, words):
    cfg = tiny()
    mutate(cfg)
    with pytest.raises(err) as ei:
        resolve_config(cfg)
    for w in words:
        assert w in str(ei.value)


def test_config_errors_raise_before_any_compute(env, tmp_path):
    before = set(env.rglob("*.pt"))
    with pytest.raises(UnknownNameError):
        run_job(tiny("nope"), str(tmp_path))
    # a build-time check (regularizer.check_models) also raises, before the teacher is trained
    cfg = tiny(student="smallcnn", regularizers=["test-needs-spiking"], train_subset=200)
    with pytest.raises(ConfigError, match="must be spiking"):
        run_job(cfg, str(tmp_path))
    with pytest.raises(ConfigError, match="val_size"):
        run_job(tiny(val_size=256), str(tmp_path))
    assert set(env.rglob("*.pt")) == before
    assert not (tmp_path / "result.json").exists()


def test_config_hash_is_stable_and_changes_with_every_value():
    cfg = resolve_config(tiny(regularizers=["test-nan"]))
    h = config_hash(cfg)
    assert len(h) == 12 and h == config_hash(json.loads(json.dumps(cfg)))
    assert h == config_hash({k: cfg[k] for k in reversed(list(cfg))})  # key order is irrelevant
    prog = copy.deepcopy(cfg)
    prog["run"]["progress"] = not prog["run"]["progress"]
    assert config_hash(prog) == h  # progress bars cannot change a result

    def bumped(v):
        if isinstance(v, bool):
            return not v
        if isinstance(v, (int, float)):
            return v + 1
        if isinstance(v, str):
            return v + "x"
        if isinstance(v, list):
            return v + ["x"]
        return 1  # None

    from benchmarks.job import PINNED_RUN_KEYS, UNHASHED_RUN_KEYS

    unhashed = {("run", k) for k in (*UNHASHED_RUN_KEYS, *PINNED_RUN_KEYS)}  # cannot change a result
    seen = set()
    for sec, vals in cfg.items():
        for key, val in vals.items():
            if (sec, key) in unhashed:
                continue
            c = copy.deepcopy(cfg)
            c[sec][key] = bumped(val)
            h2 = config_hash(c)
            assert h2 != h, (sec, key)
            seen.add(h2)
    assert len(seen) == sum(len(v) for v in cfg.values()) - len(unhashed)


# ----------------------------------------------------------------------------- run
def test_result_json_has_every_field_and_matches_the_returned_row(tmp_path):
    out = tmp_path / "run"
    evals = []
    row = run_job(tiny(val_size=32), str(out), on_eval=lambda e, m: evals.append((e, m)))
    assert row["status"] == "ok", row["traceback"]
    assert REQUIRED_KEYS <= set(row)
    on_disk = json.loads((out / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(row))
    # atomic write left no temp file; the sample grid is the pool's last 32 images, 8 per row
    assert sorted(os.listdir(out)) == ["job.log", "result.json", "samples.png", "student.pt"]  # no checkpoint once ok
    from PIL import Image
    with Image.open(out / "samples.png") as im:
        w, h = im.size
    side = (w - 1) // 8 - 1  # make_grid: nrow * (W + pad) + pad, pad 1
    assert w == 8 * (side + 1) + 1 and h == 4 * (side + 1) + 1 and side > 0
    assert row["run_id"] == row["config_hash"] == config_hash(row["config"])
    assert row["config"] == resolve_config(tiny(val_size=32))
    assert row["n_val"] == 32 and row["n_train"] == 256 - 32 and row["n_test"] == 64
    assert row["val_acc"] is not None and 0 <= row["val_acc"] <= 100
    assert 0 <= row["teacher_acc"] <= 100 and 0 <= row["student_acc"] <= row["student_acc_best"] <= 100
    assert row["images_synthesized"] == 2 * 16
    assert set(row["synth_losses"]) >= {"bn", "oh", "adv"}
    assert 0 <= row["firing_rate"] <= 1 and row["sops_per_image"] > 0
    assert row["device"] == "cpu" and row["peak_rss_mb"] > 0 and row["error"] is None
    assert row["versions"]["torch"] and row["versions"]["python"]
    assert [e for e, _ in evals] == [0, 1] and set(evals[0][1]) == {"test_acc", "val_acc", "agreement"}
    assert len(row["history"]) == 2 and row["history"][-1]["test_acc"] == row["student_acc"]


@pytest.mark.parametrize("phase, synth, where", [("synthesis", "deepinversion", "synthesis"),
                                                 ("distill", "noise", "distillation")])
def test_nan_term_fails_the_run_naming_the_term_without_raising(tmp_path, phase, synth, where):
    cfg = tiny(synth, regularizers=["test-nan"])
    cfg["test-nan"] = {"phase": phase}
    row = run_job(cfg, str(tmp_path))
    assert row["status"] == "failed"
    assert row["error_type"] == "NonFiniteLossError"
    assert "'test-nan/bad'" in row["error"] and "nan" in row["error"] and where in row["error"]
    assert "Traceback" in row["traceback"]
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"
    assert row["teacher_acc"] is not None  # what ran before the failure is kept
    # the same regularizer with a finite term runs fine: the NaN is what failed it
    cfg["test-nan"]["nan"] = False
    assert run_job(cfg)["status"] == "ok"


def test_same_seed_same_numbers_whether_teacher_is_trained_or_cached(env):
    cfg = tiny(seed=7, train_subset=192)
    first = run_job(cfg)  # trains this teacher
    second = run_job(cfg)  # reads it from the cache
    assert first["teacher_cached"] is False and second["teacher_cached"] is True
    for key in ("teacher_acc", "teacher_digest", "student_acc", "student_acc_best", "synth_losses", "firing_rate", "sops_per_image"):
        assert first[key] == second[key], key
    assert [h["kd_loss"] for h in first["history"]] == [h["kd_loss"] for h in second["history"]]
    other = run_job(tiny(seed=8, train_subset=192))
    assert other["synth_losses"] != first["synth_losses"]
    assert len(first["teacher_digest"]) == 16 and other["teacher_digest"] != first["teacher_digest"]


def test_weights_digest_sees_one_ulp_and_nothing_but_the_weights():
    from baselines.provenance import weights_digest

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    b = copy.deepcopy(a)
    assert weights_digest(a) == weights_digest(b)
    b.train()(torch.randn(2, 1, 5, 5))  # a forward in train mode moves BN's running stats: other state
    assert weights_digest(a) != weights_digest(b)
    c = copy.deepcopy(a)
    with torch.no_grad():
        w = c[0].weight.view(-1)
        w[0] = torch.nextafter(w[0], torch.tensor(float("inf")))
    assert weights_digest(a) != weights_digest(c)
    assert weights_digest(copy.deepcopy(a).double()) != weights_digest(a)  # dtype is part of it


def test_pruning_propagates_and_is_recorded(tmp_path):
    optuna = pytest.importorskip("optuna")

    def prune(epoch, metrics):
        raise optuna.TrialPruned()

    with pytest.raises(optuna.TrialPruned):
        run_job(tiny("noise"), str(tmp_path), on_eval=prune)
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "pruned"


def test_an_exception_inside_the_run_becomes_a_failed_row(tmp_path):
    def boom(epoch, metrics):
        raise RuntimeError("evaluation callback exploded")

    row = run_job(tiny("noise"), str(tmp_path), on_eval=boom)
    assert row["status"] == "failed" and "evaluation callback exploded" in row["error"]
    assert len(row["history"]) == 1 and not math.isnan(row["history"][0]["test_acc"])


def test_user_checkpoint_teacher_runs_and_a_misfit_raises_before_compute(tmp_path):
    from baselines.errors import CheckpointError
    from baselines.registry import TEACHERS

    good = TEACHERS.get("smallcnn")(in_channels=1, num_classes=4, image_size=16)
    torch.save({"state_dict": good.state_dict()}, tmp_path / "good.pt")
    row = run_job(tiny("noise", teacher=f"smallcnn@{tmp_path / 'good.pt'}"), str(tmp_path / "ok"))
    assert row["status"] == "ok", row["traceback"]
    assert row["teacher_checkpoint"] == str(tmp_path / "good.pt") and row["teacher_seconds"] == 0.0
    bad = TEACHERS.get("smallcnn")(in_channels=1, num_classes=10, image_size=16)
    torch.save(bad.state_dict(), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="num_classes 10 vs 4"):
        run_job(tiny("noise", teacher=f"smallcnn@{tmp_path / 'bad.pt'}"), str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_config(tiny("noise", teacher=f"smallcnn@{tmp_path / 'missing.pt'}"))


# ----------------------------------------------------------------------------- provenance
def test_rows_record_the_thread_count_the_numbers_depend_on():
    """On a CPU the thread count sets the summation order, so a row that omits it cannot be
    reproduced to the digit: versions.torch_threads is the count the job ran with."""
    from baselines.provenance import package_versions

    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert package_versions()["torch_threads"] == n
    finally:
        torch.set_num_threads(before)


def test_rows_record_the_cpu_the_numbers_depend_on(monkeypatch):
    """The same seed gives other numbers on another CPU model (its instruction set and caches
    choose the kernels), so rows record the CPU, the kernels' instruction set and any cap set
    on it (a capped run is another machine for this purpose)."""
    from baselines.provenance import cpu_identity, package_versions

    for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(k, raising=False)
    plain = cpu_identity()
    assert package_versions()["cpu"] == plain
    assert f"kernels {torch.backends.cpu.get_cpu_capability()}" in plain
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    capped = cpu_identity()
    assert capped != plain and capped.endswith("ONEDNN_MAX_CPU_ISA=AVX2")


def test_resuming_a_directory_of_another_machines_rows_warns(tmp_path):
    """Rows computed on another CPU do not pair bit for bit with new ones: check_out_dir says
    so (and names that machine) before any compute; rows of this machine, or older rows whose
    platform string is this one's, raise no such warning."""
    from baselines.provenance import cpu_identity, package_versions
    from benchmarks.store import check_out_dir, this_machine, write_manifest, write_row

    def put(out, jid, versions):
        write_row(out / "rows", jid, {"job_id": jid, "status": "ok", "device": "cpu", "versions": versions,
                                      "job_label": f"d/t:s/noise/{jid}"})
        write_manifest(out, {"name": "p", "source": "x", "data": {}}, {jid: f"d/t:s/noise/{jid}"})

    here = package_versions()
    put(tmp_path / "same", "a1", here)
    put(tmp_path / "old", "a2", {k: v for k, v in here.items() if k not in ("cpu", "gpu")})
    assert not [w for w in check_out_dir(tmp_path / "same", "p", ["a1"]) if "computed on" in w]
    assert not [w for w in check_out_dir(tmp_path / "old", "p", ["a2"]) if "computed on" in w]
    put(tmp_path / "other", "a3", dict(here, cpu="Some CPU (family 1, model 2, stepping 3); kernels AVX2"))
    warn = [w for w in check_out_dir(tmp_path / "other", "p", ["a3"]) if "computed on" in w]
    assert len(warn) == 1 and "Some CPU (family 1" in warn[0] and cpu_identity() in warn[0]
    assert this_machine()["cpu"] == cpu_identity()
    put(tmp_path / "older", "a4", dict({k: v for k, v in here.items() if k != "cpu"}, platform="Linux-other"))
    assert any("platform Linux-other" in w for w in check_out_dir(tmp_path / "older", "p", ["a4"]))


def test_provenance_helpers(tmp_path):
    import random

    import numpy as np

    from baselines.provenance import git_commit, package_versions, peak_rss_mb, pick_device, set_seed

    set_seed(11)
    a = (random.random(), float(np.random.rand()), torch.rand(2))
    set_seed(11)
    b = (random.random(), float(np.random.rand()), torch.rand(2))
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])
    assert torch.are_deterministic_algorithms_enabled()
    assert git_commit(tmp_path) is None  # not a checkout
    assert set(package_versions()) >= {"torch", "torchvision", "spikingjelly", "optuna", "numpy", "stars-dfkd", "python"}
    assert peak_rss_mb() > 10
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            pick_device("cuda")


def test_save_samples_uses_no_random_numbers_and_sorts_by_class(tmp_path):
    """The sample grid must not change a run's numbers: it draws nothing from torch's RNG."""
    from PIL import Image

    from baselines.pool import ImagePool
    from benchmarks.job import save_samples

    class _Synth:
        pool = ImagePool()

    x = (torch.arange(5.0) * 50 / 255).reshape(5, 1, 1, 1).expand(5, 1, 4, 4).contiguous()  # pixels 0..200
    _Synth.pool.add(x, torch.tensor([3, 1, 4, 0, 2]))
    state = torch.get_rng_state()
    path = save_samples(_Synth, str(tmp_path / "s.png"), n=5, nrow=5)
    assert torch.equal(state, torch.get_rng_state())
    with Image.open(path) as im:
        assert im.mode == "L"  # one-channel images: a grayscale file, not an RGB copy of it
        px = [im.getpixel((1 + k * 5, 1)) for k in range(5)]
    assert px == [150, 50, 200, 0, 100]  # class order 0, 1, 2, 3, 4 -> images 3, 1, 4, 0, 2 (x50)
    rgb = ImagePool()
    colour = torch.tensor([0.0, 120.0, 240.0]).view(3, 1, 1).expand(3, 4, 4)
    rgb.add(torch.stack([torch.full((3, 4, 4), 30.0), colour]) / 255, torch.tensor([1, 0]))
    with Image.open(save_samples(type("RGB", (), {"pool": rgb}), str(tmp_path / "c.png"), n=2, nrow=2)) as im:
        assert im.mode == "RGB" and im.getpixel((1, 1)) == (0, 120, 240)  # class 0 first, colours kept
    assert save_samples(type("Empty", (), {"pool": ImagePool()}), str(tmp_path / "e.png")) is None


def test_git_commit_is_dirty_for_code_changes_not_for_benchmark_outputs(tmp_path):
    """A bench writes results/ (committed) or runs/: its rows must still name the clean
    commit of the code that made them; an edit to code makes it "-dirty"."""
    import shutil
    import subprocess

    from baselines.provenance import git_commit

    if shutil.which("git") is None:
        pytest.skip("git not installed")

    def git(*a):
        subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "row.json").write_text("{}\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = git_commit(tmp_path)
    assert head and not head.endswith("-dirty")
    (tmp_path / "results" / "row.json").write_text('{"acc": 1}\n')
    (tmp_path / "results" / "new.json").write_text("{}\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "x.json").write_text("{}\n")
    assert git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == f"{head}-dirty"


def test_a_tree_sent_without_its_git_records_the_commit_its_sender_names(monkeypatch, tmp_path):
    """On the GPU the tree's copy carried a stale .git: rows said the previous commit,
    "-dirty". The sender's $DFKD_GIT_COMMIT is what this package's own rows record; an
    explicit path (another checkout) is still read from its git."""
    from baselines.provenance import GIT_COMMIT_ENV, git_commit

    monkeypatch.setenv(GIT_COMMIT_ENV, "d6d9627abc\n")
    assert git_commit() == "d6d9627abc"
    assert git_commit(tmp_path) is None  # not a checkout: the variable does not speak for it
    monkeypatch.delenv(GIT_COMMIT_ENV)
    assert git_commit() != "d6d9627abc"
