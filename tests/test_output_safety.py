"""Issue 13: nothing computed is lost. Output locations are refused before compute (an existing
file, a read-only folder, too long a name), a result whose final location cannot be written
after compute is kept in a fallback file the message names, a benchmark survives a row it
cannot write (disk full) and a re-run completes it, ``dfkd report`` names corrupt row files,
and two benchmarks cannot share an output directory.

Benchmarks run the fake jobs of tests/test_runner.py in-process (submitit's debug executor);
a full disk is simulated by making ``os.replace`` onto the one final path raise ENOSPC (the
last step of every atomic JSON write).
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import benchmarks.job
from baselines.errors import ConfigError
from benchmarks.cli import main
from benchmarks.preset import load_preset
from benchmarks.runner import run_bench
from benchmarks.store import read_rows
from test_runner import (DEBUG, N_TINY, TINY as TINY_PRESET, _bench_cmd, _env, bench_main, dbg, expand,  # noqa: F401
                         fake, write_preset)

TINY = ["--dataset", "toy", "--synthesizer", "noise", "--teacher-epochs", "1", "--T", "2", "--device", "cpu",
        "--quiet", "--set", "distill.epochs=1", "--set", "distill.kd_steps=2", "--set", "distill.batch_size=8",
        "--set", "run.metrics_images=8", "--set", "run.save_student=false"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DFKD_CACHE", str(tmp_path / "cache"))  # teachers and orphaned results


def _full_disk_at(monkeypatch, final: Path) -> None:
    """``os.replace`` onto ``final`` raises ENOSPC (every other write goes through)."""
    real = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst).resolve() == final.resolve():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)


def _readonly(monkeypatch, folder: Path) -> None:
    """Files under ``folder`` cannot be created (EROFS), as on a read-only mount (the tests
    run as root, for whom chmod does not make a folder read-only)."""
    import builtins

    real = builtins.open

    def fake_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax") and str(Path(file).absolute()).startswith(str(folder.absolute())):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real(file, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)


def _no_compute(monkeypatch):
    def run_job(*a, **k):
        raise AssertionError("compute started although the output location is unusable")

    monkeypatch.setattr(benchmarks.job, "run_job", run_job)


# --------------------------------------------------------------------------- distill --out
@pytest.mark.parametrize("kind, texts", [
    ("file", ["is an existing file, not a directory", "pass the path of a directory"]),
    ("dev-full", ["'/dev/full' is an existing file"]),
    ("long-name", ["is 300 bytes long, more than the file system allows (255)", "choose a shorter name"]),
    ("read-only", ["cannot be written (Read-only file system)", "pass a directory you can write to"]),
])
def test_distill_out_unusable_is_an_error_before_compute(tmp_path, monkeypatch, capsys, kind, texts):
    _no_compute(monkeypatch)
    out = {"file": tmp_path / "afile", "dev-full": Path("/dev/full"), "long-name": tmp_path / ("x" * 300),
           "read-only": tmp_path / "ro" / "run"}[kind]
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "ro").mkdir()
    if kind == "dev-full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    if kind == "read-only":
        _readonly(monkeypatch, tmp_path / "ro")
    rc = main(["distill", *TINY, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --out ") and "Traceback" not in err, err
    for t in texts:
        assert t in err, (t, err)
    assert not (tmp_path / "ro" / "run").exists()  # the check leaves no folder behind


def test_distill_result_that_cannot_be_written_is_kept_and_named(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _full_disk_at(monkeypatch, out / "result.json")
    rc = main(["distill", *TINY, "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 1, cap.err
    assert not (out / "result.json").exists()
    kept = list((tmp_path / "cache" / "orphaned-results").glob("*-result.json"))
    assert len(kept) == 1, cap.err
    row = json.loads(kept[0].read_text())
    assert row["status"] == "ok" and row["student_acc"] is not None
    assert cap.err.startswith(f"error: could not write {out / 'result.json'} ([Errno 28] No space left on device)")
    assert f"the result was saved to {kept[0]} instead" in cap.err and "Traceback" not in cap.err
    assert str(kept[0]) in cap.out  # the summary points at the file that exists


# --------------------------------------------------------------------------- bench --out
@pytest.mark.parametrize("kind, texts", [
    ("file", ["is an existing file, not a directory"]),
    ("long-name", ["bytes long, more than the file system allows"]),
    ("read-only", ["cannot be written (Read-only file system)"]),
])
def test_bench_out_unusable_is_an_error_before_compute(tmp_path, fake, monkeypatch, capsys, kind, texts):
    preset = write_preset(tmp_path)
    out = {"file": tmp_path / "afile", "long-name": tmp_path / ("y" * 300), "read-only": tmp_path / "ro" / "b"}[kind]
    (tmp_path / "afile").write_text("x\n")
    (tmp_path / "ro").mkdir()
    if kind == "read-only":
        _readonly(monkeypatch, tmp_path / "ro")
    rc = bench_main(["--preset", preset, "--out", str(out), "--executor", "submitit", "--set", DEBUG[0]])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --out ") and "Traceback" not in err, err
    for t in texts:
        assert t in err, (t, err)
    assert fake() == []


@pytest.mark.parametrize("name, text", [
    ("../../x", "must be a plain folder name"),
    ("a/b", "must be a plain folder name"),
    ("n" * 300, "[bench].name is 300 bytes long"),
])
def test_bench_preset_name_must_be_a_plain_short_folder_name(tmp_path, fake, name, text):
    preset = write_preset(tmp_path, TINY_PRESET.replace('name = "tiny"', f'name = "{name}"'))
    with pytest.raises(ConfigError) as e:
        run_bench(dbg(preset, tmp_path / "o"), log=lambda m: None)
    assert text in str(e.value) and ("rename it" in str(e.value) or "shorten it" in str(e.value))
    assert fake() == []


def test_bench_survives_a_row_it_cannot_write_and_a_rerun_completes(tmp_path, fake, monkeypatch):
    preset, out = write_preset(tmp_path), tmp_path / "out"
    victim = expand(load_preset(preset))[3]
    _full_disk_at(monkeypatch, out / "rows" / f"{victim.job_id}.json")
    log: list[str] = []
    assert run_bench(dbg(preset, out), log=log.append) == 1
    rows = read_rows(out)
    assert len(rows) == N_TINY - 1 and victim.job_id not in rows  # every other finished row is kept
    said = [m for m in log if victim.label in m and "No space left on device" in m]
    assert said, log
    kept = list((tmp_path / "cache" / "orphaned-results").glob(f"*-row-{victim.job_id}.json"))
    assert len(kept) == 1 and str(kept[0]) in said[0]
    assert json.loads(kept[0].read_text())["status"] == "ok"
    monkeypatch.undo()  # space freed
    monkeypatch.setenv("FAKE_COUNTER", str(tmp_path / "counter.txt"))
    n = len(fake())
    assert run_bench(dbg(preset, out), log=lambda m: None) == 0
    assert fake()[n:] == [victim.job_id]  # only the job without a row ran again
    assert len(read_rows(out)) == N_TINY


# --------------------------------------------------------------------------- report
def test_report_names_and_counts_a_truncated_row(tmp_path, fake, capsys):
    preset, out = write_preset(tmp_path), tmp_path / "out"
    assert run_bench(dbg(preset, out), log=lambda m: None) == 0
    victim = sorted((out / "rows").glob("*.json"))[2]
    victim.write_text(victim.read_text()[:40])  # truncated
    rc = main(["report", str(out), "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("error: 1 row file(s) are corrupt") and str(victim) in err and "re-run" in err, err
    md = (out / "leaderboard.md").read_text()
    assert "## Corrupt row files" in md and victim.name in md


# --------------------------------------------------------------------------- lock
def test_second_bench_on_the_same_out_exits_naming_the_holder(tmp_path, fake, capsys):
    preset, out, counter = write_preset(tmp_path), tmp_path / "out", tmp_path / "counter.txt"
    first = subprocess.Popen(_bench_cmd(preset, out, "--executor", "submitit", "--set", DEBUG[0], "--only",
                                        "*/deepinversion/seed0"),
                             env=_env(counter, FAKE_SLEEP="30"), cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not list((out / "jobs").glob("*/started")):  # the first holds the lock and runs a job
            assert first.poll() is None and time.time() < deadline, first.stdout.read().decode()
            time.sleep(0.1)
        rc = bench_main(["--preset", preset, "--out", str(out), "--executor", "submitit", "--set", DEBUG[0]])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, err
        assert f"in use by another dfkd bench (pid {first.pid}" in err and "exits rather than waits" in err, err
        assert len(fake()) == 1  # only the first bench's job ran
    finally:
        first.kill()
        first.wait()
