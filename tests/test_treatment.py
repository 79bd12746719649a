"""The treatment is the preset's, not a hard-coded plugin: a third-party regularizer named in
``[bench].treatment`` gets the same bench leaderboard, tuning and comparison as STARS; and
one preset loader serves bench, tune and compare (a preset valid for one is valid for all)."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from baselines import Regularizer, StepContext
from baselines.errors import ConfigError
from baselines.registry import REGULARIZERS
from benchmarks import tune
from benchmarks.compare import compare_dirs
from benchmarks.jobs import expand
from benchmarks.preset import load_preset, preset_names
from benchmarks.runner import BenchOptions, run_bench
from benchmarks.store import read_rows

REG = "tp-logit-norm"


class LogitNorm(Regularizer):
    """A third party's regularizer: penalize the teacher's logit norm on synthetic images."""

    phases = ("synthesis",)

    @dataclass
    class Config:
        weight: float = 0.1

    def terms(self, ctx: StepContext):
        return {"logit_norm": self.cfg.weight * ctx.teacher.logits.norm(dim=1).mean()}


@pytest.fixture
def logit_norm():
    REGULARIZERS.register(REG)(LogitNorm)
    yield REG
    REGULARIZERS.unregister(REG)


PRESET = f"""
[bench]
name = "third-party"
datasets = ["toy"]
pairs = ["smallcnn:spiking_smallcnn"]
synthesizers = ["deepinversion"]
regularizer_sets = [[], ["{REG}"]]
treatment = ["{REG}"]
seeds = [0]
references = ["teacher"]
T = 2

[run]
device = "cpu"
teacher_epochs = 1
test_subset = 64
metrics_images = 8

[distill]
epochs = 1
kd_steps = 2
batch_size = 8
eval_every = 1
eval_batch_size = 64

[budget.deepinversion]
deepinversion = {{ batch_size = 8, iterations = 2 }}

[params.{REG}]
weight = 0.2

[tune]
weight = [0.05, 0.3]
val_size = 64
"""
IN_PROCESS = ["executor.submitit.cluster=debug"]  # registered at runtime: jobs run in this process


@pytest.mark.slow
def test_bench_tune_and_compare_with_a_third_party_treatment(tmp_path, logit_norm, monkeypatch):
    monkeypatch.setenv("DFKD_CACHE", str(tmp_path / "cache"))
    preset = tmp_path / "p.toml"
    preset.write_text(textwrap.dedent(PRESET))
    a = tmp_path / "a"
    assert run_bench(BenchOptions(preset=str(preset), out=str(a), executor="submitit", sets=IN_PROCESS),
                     log=lambda m: None) == 0
    rows = read_rows(a)
    treated = [r for r in rows.values() if r.regularizer_names == [REG]]
    assert len(rows) == 2 and len(treated) == 1 and treated[0].ok
    assert treated[0].config[REG]["weight"] == 0.2
    board = (a / "leaderboard.md").read_text()
    assert f"with {REG}" in board and f"without {REG}" in board

    s = tune.run_tune(tune.TuneSpec(preset=str(preset), synthesizer="deepinversion", trials=2,
                                    out=str(tmp_path / "tune"), plots=False, final_test=False))
    assert s["trials"]["complete"] + s["trials"]["pruned"] == 2
    assert set(s["best_params"]) == {"weight"} and 0.05 <= s["best_params"]["weight"] <= 0.3
    assert s["base_config"]["run"]["regularizers"] == [REG] and s["study"].startswith(REG)
    best = tmp_path / "tune" / "best_params.toml"
    assert f"[{REG}]" in best.read_text()

    b = tmp_path / "b"
    assert run_bench(BenchOptions(preset=str(preset), out=str(b), executor="submitit", sets=IN_PROCESS,
                                  params_file=str(best), only=[f"*/deepinversion+{REG}/*"]),
                     log=lambda m: None) == 0
    out_md = tmp_path / "cmp.md"
    assert compare_dirs(str(a), str(b), "default", "tuned", regularizers=REG, out=str(out_md)) == 0
    assert REG in out_md.read_text() and "tuned - default" in out_md.read_text()


def test_one_loader_a_preset_valid_for_bench_is_valid_for_tune(tmp_path):
    """Every shipped preset loads once, expands for bench and plans for tune with the same
    layering (the tuned job's config is the bench job's plus the objective's split)."""
    from benchmarks.job import resolve_config

    for name in preset_names():
        p = load_preset(name)
        assert p.treatment == ["stars"]
        jobs = {j.label: j for j in expand(p, resolve=lambda u: u)}
        synth = p.bench["synthesizers"][0]
        plan = tune.make_plan(tune.TuneSpec(preset=name, synthesizer=synth, trials=1, out=str(tmp_path / name),
                                            resolver="benchmarks.job:resolve_config", objective="agreement"))
        t, s = p.bench["pairs"][0].split(":")
        label = f"{p.bench['datasets'][0]}/{t}:{s}/{synth}+stars/seed{p.bench['seeds'][0]}"
        if label not in jobs:  # e.g. baselines-ann benches no regularizer; tune still plans
            continue
        bench_user = jobs[label].cfg
        tuned = {k: v for k, v in plan.base.items()}
        tuned["distill"] = {k: v for k, v in tuned["distill"].items() if k != "heldout_images"}
        bench_user["distill"] = dict(bench_user.get("distill", {}))
        assert tuned == {**bench_user, "distill": bench_user["distill"]}, name
        assert resolve_config(plan.base)["run"]["regularizers"] == ["stars"]


def test_tune_rejects_what_bench_rejects(tmp_path):
    """Plain keys under [budget.<synth>] were accepted by the old tuner only; now both refuse."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[bench]\ndatasets = ["toy"]\npairs = ["smallcnn:spiking_smallcnn"]\n'
                   'synthesizers = ["deepinversion"]\nregularizer_sets = [[], ["stars"]]\n'
                   '[budget.deepinversion]\niterations = 5\n')
    with pytest.raises(ConfigError, match="iterations"):
        load_preset(str(bad))
    with pytest.raises(ConfigError, match="iterations"):
        tune.make_plan(tune.TuneSpec(preset=str(bad), synthesizer="deepinversion", trials=1,
                                     out=str(tmp_path / "o")))


def test_a_preset_without_a_treatment_benches_but_does_not_tune(tmp_path):
    p = tmp_path / "none.toml"
    p.write_text('[bench]\ndatasets = ["toy"]\npairs = ["smallcnn:spiking_smallcnn"]\n'
                 'synthesizers = ["deepinversion"]\nregularizer_sets = [[], ["stars"], ["rca"]]\n')
    assert load_preset(str(p)).treatment == []
    with pytest.raises(ConfigError, match="treatment"):
        tune.make_plan(tune.TuneSpec(preset=str(p), synthesizer="deepinversion", trials=1,
                                     out=str(tmp_path / "o")))


def test_evidence_tunes_grad_shares_on_a_log_scale_around_the_defaults(tmp_path):
    """The evidence preset runs STARS under grad-share, so `dfkd tune --preset evidence` must
    search shares log-scaled and span both levels the seed-0 sweep measured (0.1 / 0.05, the
    default, and 0.5 / 0.3), not the published loss-weight ranges [0.3, 0.7] / [0.2, 0.5]."""
    plan = tune.make_plan(tune.TuneSpec(preset="evidence", synthesizer="cmi", trials=1, out=str(tmp_path / "t"),
                                        resolver="benchmarks.job:resolve_config", objective="agreement"))
    space = {p.key: p for p in plan.space.params}
    for key, low, high in (("alpha", 0.1, 0.5), ("beta", 0.05, 0.3)):  # the seed-0 sweep's two levels
        p = space[key]
        assert p.log and p.low < low and p.high > high, (key, p)
