"""A third-party distribution plugs in without any edit to this repository.

The test writes a package ``thirdparty_dfkd`` (one Synthesizer subclass, one Regularizer
subclass) and its ``*.dist-info`` (METADATA + entry_points.txt in the groups
``stars_dfkd.synthesizers`` / ``stars_dfkd.regularizers``) into a temporary directory,
puts it on sys.path, and checks that both names are registered, listed by ``dfkd list``
(in a fresh process, as a cluster worker would see them) and run end to end: the
third-party synthesizer's pool feeds the KD steps and the regularizer's term is logged.
"""
import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from baselines.registry import REGULARIZERS, SYNTHESIZERS

REPO = Path(__file__).resolve().parent.parent

PLUGIN = textwrap.dedent('''
    """A third-party DFKD plugin (written by tests/test_plugins.py, not part of stars-dfkd)."""
    import time
    from dataclasses import dataclass

    import torch
    import torch.nn.functional as F

    from baselines import Regularizer, Synthesizer
    from baselines.config import nonneg, require
    from baselines.hooks import total_loss
    from baselines.synthesizers.base import eval_frozen

    CALLS = {"synthesize": 0, "sample": 0, "reg": 0}


    class GraySynth(Synthesizer):
        """Third-party synthesizer: gray images nudged toward a class by the teacher."""

        name = "tp-gray"
        uses_student = False

        @dataclass
        class Config:
            batch_size: int = 8
            steps: int = 2
            lr: float = 0.05

            def validate(self):
                require(self.batch_size >= 1 and self.steps >= 1, "tp-gray: batch_size, steps >= 1")

        def synthesize(self):
            CALLS["synthesize"] += 1
            t0 = time.perf_counter()
            targets = self.random_targets(self.cfg.batch_size)
            x = torch.full((self.cfg.batch_size, *self.spec.shape), 0.5, device=self.device)
            x.requires_grad_()
            opt = torch.optim.SGD([x], lr=self.cfg.lr)
            with eval_frozen(self.teacher, self.student):
                for it in range(self.cfg.steps):
                    xn = self.spec.normalize(x)
                    t_out, s_out = self.forward_pair(xn, self.need_student(False))
                    terms = {"ce": F.cross_entropy(t_out.logits, targets)}
                    terms.update(self.step_terms(xn, targets, t_out, s_out, it))
                    loss = total_loss(terms, "tp-gray synthesis", self.step)
                    opt.zero_grad()
                    self.backward(loss)
                    opt.step()
                    self.step += 1
            return self.finish(x.detach(), targets, t0, terms)

        def sample(self, batch_size):
            CALLS["sample"] += 1
            return super().sample(batch_size)


    class MeanPixel(Regularizer):
        """Third-party regularizer: weight * (mean normalized pixel)^2 during synthesis."""

        @dataclass
        class Config:
            weight: float = 0.5

            def validate(self):
                nonneg("tp-meanpix", weight=self.weight)

        phases = ("synthesis",)

        def needs_student(self, phase):
            return False

        def terms(self, ctx):
            CALLS["reg"] += 1
            return {"mean_sq": self.cfg.weight * ctx.images.mean() ** 2}
''')


def write_thirdparty(root: Path) -> None:
    """Install ``thirdparty-dfkd`` into ``root`` the way pip lays out a wheel."""
    pkg = root / "thirdparty_dfkd"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PLUGIN)
    info = root / "thirdparty_dfkd-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-dfkd\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [stars_dfkd.synthesizers]
        tp-gray = thirdparty_dfkd:GraySynth

        [stars_dfkd.regularizers]
        tp-meanpix = thirdparty_dfkd:MeanPixel
    """))


@pytest.fixture
def thirdparty(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    write_thirdparty(site)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("DFKD_CACHE", str(tmp_path / "cache"))
    importlib.invalidate_caches()
    yield site
    sys.modules.pop("thirdparty_dfkd", None)
    importlib.invalidate_caches()


def _env(site: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def tiny_cfg(epochs=2, kd_steps=3):
    return {
        "run": {"dataset": "toy", "teacher": "smallcnn", "teacher_epochs": 1, "student": "spiking_smallcnn",
                "T": 2, "synthesizer": "tp-gray", "regularizers": ["tp-meanpix"], "device": "cpu",
                "test_subset": 64, "metrics_images": 16},
        "distill": {"epochs": epochs, "kd_steps": kd_steps, "batch_size": 8, "eval_batch_size": 64},
        "tp-gray": {"batch_size": 6},
        "tp-meanpix": {"weight": 0.25},
    }


def test_thirdparty_names_are_registered_with_their_distribution(thirdparty):
    assert "tp-gray" in SYNTHESIZERS.names()
    assert "tp-meanpix" in REGULARIZERS.names()
    assert SYNTHESIZERS.entry("tp-gray").source == "thirdparty-dfkd"
    assert REGULARIZERS.entry("tp-meanpix").source == "thirdparty-dfkd"
    assert SYNTHESIZERS.get("tp-gray").__module__ == "thirdparty_dfkd"
    assert "real" in SYNTHESIZERS.names()  # built-ins still there


def test_thirdparty_entries_appear_in_dfkd_list_of_a_fresh_process(thirdparty):
    out = subprocess.run([sys.executable, "-m", "benchmarks.cli", "list"], cwd=REPO, env=_env(thirdparty),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    gray = [ln for ln in lines if ln.strip().startswith("tp-gray ")]
    reg = [ln for ln in lines if ln.strip().startswith("tp-meanpix ")]
    assert gray and "gray images nudged toward a class" in gray[0] and "[thirdparty-dfkd]" in gray[0]
    assert reg and "(mean normalized pixel)^2" in reg[0] and "[thirdparty-dfkd]" in reg[0]
    # they are listed under the right kind
    assert lines.index("synthesizers:") < lines.index(gray[0]) < lines.index("regularizers:") < lines.index(reg[0])


def test_thirdparty_synthesizer_and_regularizer_run_a_job(thirdparty, tmp_path):
    from benchmarks.job import resolve_config, run_job

    cfg = resolve_config(tiny_cfg())
    assert cfg["tp-gray"] == {"batch_size": 6, "steps": 2, "lr": 0.05}  # defaults filled in
    row = run_job(cfg, str(tmp_path / "out"))
    assert row["status"] == "ok", row["traceback"]
    import thirdparty_dfkd

    calls = thirdparty_dfkd.CALLS
    # one synthesize() per epoch, its images are the transfer set: every KD step sampled it
    assert calls["synthesize"] == 2  # epochs x synth_batches
    assert row["images_synthesized"] == 2 * 6
    assert calls["sample"] >= 2 * 3
    # the regularizer acted at every inner synthesis step and its term is logged by name
    assert calls["reg"] == 2 * 2
    assert set(row["synth_losses"]) == {"ce", "tp-meanpix/mean_sq"}
    assert row["synth_losses"]["tp-meanpix/mean_sq"] >= 0
    assert row["regularizers"] == [{"name": "tp-meanpix", "params": {"weight": 0.25}}]
    assert row["synthesizer"] == "tp-gray"


def test_thirdparty_components_run_through_the_cli_in_a_fresh_process(thirdparty, tmp_path):
    out_dir = tmp_path / "cli-out"
    cmd = [sys.executable, "-m", "benchmarks.cli", "distill", "--dataset", "toy", "--teacher", "smallcnn",
           "--student", "spiking_smallcnn", "--synthesizer", "tp-gray", "--regularizer", "tp-meanpix",
           "--T", "2", "--teacher-epochs", "1", "--test-subset", "64", "--seed", "0", "--device", "cpu",
           "--out", str(out_dir), "--quiet", "--set", "distill.epochs=1", "--set", "distill.kd_steps=2",
           "--set", "distill.batch_size=8", "--set", "tp-meanpix.weight=0.5", "--set", "run.metrics_images=16"]
    env = _env(thirdparty)
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    import json

    row = json.loads((out_dir / "result.json").read_text())
    assert row["status"] == "ok"
    assert "tp-meanpix/mean_sq" in row["synth_losses"]
    assert row["config"]["tp-meanpix"] == {"weight": 0.5}
