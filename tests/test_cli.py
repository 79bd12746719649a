"""The ``dfkd`` command line: list, user errors (exit 2, one line, no traceback),
train-teacher, distill (config precedence, summary, exit 1 on a failed run)."""
import importlib
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from baselines.hooks import Regularizer
from baselines.registry import KINDS, REGULARIZERS
from benchmarks import cli
from benchmarks.cli import main

REPO = Path(__file__).resolve().parent.parent
DFKD = Path(sys.executable).parent / "dfkd"

TINY = ["--dataset", "toy", "--teacher", "smallcnn", "--student", "spiking_smallcnn", "--T", "2",
        "--teacher-epochs", "1", "--train-subset", "128", "--test-subset", "64", "--device", "cpu", "--quiet",
        "--set", "distill.epochs=1", "--set", "distill.kd_steps=2", "--set", "distill.batch_size=8",
        "--set", "run.metrics_images=8"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DFKD_CACHE", str(tmp_path / "cache"))


def test_list_prints_every_kind_with_descriptions_and_sources(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in KINDS:
        assert f"{kind}:" in out.splitlines()
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("real "))
    assert "KD on real training images" in line and line.endswith("[stars-dfkd]")
    for name in ("noise", "smallcnn", "spiking_smallcnn", "fashion-mnist", "toy"):
        assert any(ln.strip().startswith(name + " ") for ln in out.splitlines()), name


def test_list_one_kind_and_singular_names(capsys):
    assert main(["list", "synthesizer"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("synthesizers:") and "teachers:" not in out


def test_list_shows_a_broken_plugin_with_its_error_instead_of_crashing(tmp_path, monkeypatch, capsys):
    (tmp_path / "cli_broken_mod.py").write_text("raise ImportError('missing dependency xyz')\n")
    info = tmp_path / "cli_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cli-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[stars_dfkd.synthesizers]\nbroken-synth = cli_broken_mod:S\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert main(["list", "synthesizers"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "broken-synth" in ln)
    assert "failed to load" in line and "missing dependency xyz" in line and "[cli-broken]" in line
    assert any(ln.strip().startswith("real ") for ln in out.splitlines())  # the others still listed


def test_user_errors_exit_2_with_one_line_and_no_traceback(capsys, tmp_path):
    assert main(["list", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown registry kind 'bogus'") and "Traceback" not in err
    assert main(["distill", "--out", str(tmp_path), "--synthesizer", "real", "--set", "distill.epoch=3"]) == 2
    assert "Did you mean 'epochs'" in capsys.readouterr().err
    assert main(["distill", "--out", str(tmp_path), "--dataset", "toy"]) == 2
    assert "no synthesizer chosen" in capsys.readouterr().err
    assert not (tmp_path / "result.json").exists()


def test_console_script_unknown_synthesizer_exit_code_2(tmp_path):
    exe = [str(DFKD)] if DFKD.exists() else [sys.executable, "-m", "benchmarks.cli"]
    out = subprocess.run([*exe, "distill", "--synthesizer", "deepinverson", "--seed", "0", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2
    assert out.stderr.startswith("error: unknown synthesizer 'deepinverson'. Did you mean 'deepinversion'?")
    assert "Known synthesizers:" in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""


def test_missing_command_modules_are_skipped(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("cmd_list", "cmd_does_not_exist"))
    parser = cli.build_parser()
    assert parser.parse_args(["list"]).func.__module__ == "benchmarks.cmd_list"


def test_distill_config_precedence_file_then_flags_then_set(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(textwrap.dedent("""
        [run]
        synthesizer = "noise"
        seed = 3
        T = 3
        [distill]
        epochs = 7
        lr = 0.05
        [noise]
        batch_size = 32
    """))
    assert main(["distill", "--config", str(cfg), "--out", str(tmp_path), "--dry-run", "--seed", "5",
                 "--set", "distill.epochs=9", "--set", "noise.batch_size=64"]) == 0
    out = capsys.readouterr().out
    resolved = json.loads(out[:out.rindex("}") + 1])
    assert resolved["run"]["synthesizer"] == "noise"  # from the file
    assert resolved["run"]["T"] == 3 and resolved["distill"]["lr"] == 0.05  # file beats defaults
    assert resolved["run"]["seed"] == 5  # flag beats file
    assert resolved["distill"]["epochs"] == 9 and resolved["noise"]["batch_size"] == 64  # --set beats all
    assert resolved["distill"]["kd_steps"] == 400  # untouched default
    assert "run_id: " in out and not (tmp_path / "result.json").exists()


def test_train_teacher_prints_accuracy_and_checkpoint_then_hits_the_cache(tmp_path, capsys):
    args = ["train-teacher", "--dataset", "toy", "--model", "smallcnn", "--epochs", "1", "--seed", "2",
            "--train-subset", "128", "--device", "cpu", "--quiet", "--cache-dir", str(tmp_path)]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "test accuracy" in first and "trained in" in first
    assert "% on 256 test images (trained in" in first  # the toy set's 256: which set the figure is on
    ckpt = first.split("checkpoint: ")[1].strip()
    assert Path(ckpt).is_file() and ckpt.startswith(str(tmp_path))
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "from the cache" in second and second.split("checkpoint: ")[1].strip() == ckpt
    assert first.split("test accuracy ")[1].split("%")[0] == second.split("test accuracy ")[1].split("%")[0]


def test_distill_writes_result_and_prints_summary(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["distill", *TINY, "--synthesizer", "real", "--seed", "1", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    row = json.loads((out_dir / "result.json").read_text())
    assert row["status"] == "ok" and row["synthesizer"] == "real" and row["seed"] == 1
    assert row["images_synthesized"] == 128  # "real": the whole (subset) training set
    for word in ("run_id", row["run_id"], "status       ok", "student acc", "SOPs/image", str(out_dir / "result.json")):
        assert word in out, word


class _NaNDistill(Regularizer):
    """Test regularizer: NaN in every KD step."""

    @dataclass
    class Config:
        weight: float = 1.0

    phases = ("distill",)

    def terms(self, ctx):
        return {"boom": ctx.student.logits.mean() * float("nan")}


def test_distill_exit_1_when_the_run_fails(tmp_path, capsys):
    REGULARIZERS.register("cli-nan")(_NaNDistill)
    try:
        rc = main(["distill", *TINY, "--synthesizer", "noise", "--regularizer", "cli-nan", "--out", str(tmp_path)])
    finally:
        REGULARIZERS.unregister("cli-nan")
    assert rc == 1
    cap = capsys.readouterr()
    assert "status       failed" in cap.out and "'cli-nan/boom'" in cap.err
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"
