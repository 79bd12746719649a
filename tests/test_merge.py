"""``dfkd merge``: rows of several bench directories joined into one table, and only rows of the
same experiment (up to the seed), teacher and machine; nothing written when two directories
disagree about a job. Rows come from the runner's fake jobs (tests/test_runner.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from baselines.errors import ConfigError
from benchmarks.merge import fingerprint, manifest_sets, merge_dirs, plan_merge
from benchmarks.runner import run_bench
from benchmarks.store import read_manifest, read_rows
from test_runner import dbg, fake, resolve_config, write_preset  # noqa: F401 - `fake` is a fixture

quiet = dict(log=lambda m: None)


def bench(preset: str, out: Path, seeds: list[int], **kw) -> dict:
    assert run_bench(dbg(preset, out, seeds=seeds, **kw), **quiet) == 0
    return read_rows(out)


def edit_row(out: Path, jid: str, **changes) -> None:
    p = out / "rows" / f"{jid}.json"
    d = json.loads(p.read_text())
    d.update(changes)
    p.write_text(json.dumps(d))


def merge(sources, into, **kw) -> int:
    return merge_dirs([str(s) for s in sources], str(into), report=False, resolve=resolve_config, **quiet, **kw)


def results(out: Path) -> dict:
    return {jid: (r.job_label, r.student_acc) for jid, r in read_rows(out).items()}


def test_merged_seeds_equal_one_bench_of_all_seeds(tmp_path, fake):
    preset = write_preset(tmp_path)
    a, b, whole = tmp_path / "a", tmp_path / "b", tmp_path / "whole"
    bench(preset, a, [0])
    rows_b = bench(preset, b, [1, 2])
    bench(preset, whole, [0, 1, 2])
    for jid in rows_b:  # rows keep the commit they were made at, not the merging checkout's
        edit_row(b, jid, git_commit="b0b0b0")
    (b / "jobs" / next(iter(rows_b)) / "checkpoint.pt").write_bytes(b"resume state")
    assert merge([b], a) == 0
    assert results(a) == results(whole)
    man = read_manifest(a)
    assert man["preset"]["data"]["bench"]["seeds"] == [0, 1, 2]
    assert "b0b0b0" in man["code"]["git_commits"]
    assert set(man["jobs"]) == set(results(whole)) and man["merged"][-1]["rows"] == len(rows_b)
    for jid in rows_b:  # each row brings its job folder, without the resume checkpoint
        assert (a / "jobs" / jid).is_dir() and not (a / "jobs" / jid / "checkpoint.pt").exists()
    assert merge([b], a) == 0 and results(a) == results(whole)  # again: nothing changes
    ran = len(fake())  # and `dfkd bench` takes the merged directory as its own: nothing left to run
    assert run_bench(dbg(preset, a, seeds=[0, 1, 2]), **quiet) == 0 and len(fake()) == ran


def test_rows_of_another_config_are_refused(tmp_path, fake):
    preset = write_preset(tmp_path)
    a, other = tmp_path / "a", tmp_path / "other"
    bench(preset, a, [0])
    before = results(a)
    bench(preset, other, [1], sets=["distill.epochs=2"])
    assert merge([other], a) == 1  # refused rows: exit 1, none of them written
    assert results(a) == before
    plan = plan_merge([str(other)], str(a), resolve=resolve_config)
    assert not plan.add and len(plan.refused) == len(read_rows(other))
    assert "another config" in plan.refused[0]


def test_a_cell_the_target_lacks_is_checked_against_its_recorded_preset_and_sets(tmp_path, fake):
    preset = write_preset(tmp_path)
    cmi, di, di_plain = tmp_path / "cmi", tmp_path / "di", tmp_path / "di-plain"
    setting = ["distill.epochs=2"]
    bench(preset, cmi, [0], sets=setting, only=["*/cmi*"])
    bench(preset, di, [0], sets=setting, only=["*/deepinversion*"])
    bench(preset, di_plain, [1], only=["*/deepinversion*"])
    assert manifest_sets(read_manifest(cmi)) == setting
    assert merge([di_plain], cmi) == 1 and not any("deepinversion" in lab for lab, _ in results(cmi).values())
    assert merge([di], cmi) == 0
    assert results(di).items() <= results(cmi).items() and len(results(cmi)) == 4


def test_different_results_for_one_job_stop_the_merge_before_any_write(tmp_path, fake):
    preset = write_preset(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    rows = bench(preset, a, [0])
    bench(preset, b, [0, 1])
    jid = next(j for j, r in rows.items() if r.synthesizer == "cmi")
    edit_row(b, jid, student_acc=12.5)
    before, man_before = results(a), (a / "manifest.json").read_text()
    with pytest.raises(ConfigError, match="different ok rows"):
        merge([b], a)
    assert results(a) == before and (a / "manifest.json").read_text() == man_before
    assert merge([b], a, on_conflict="keep") == 0
    assert results(a)[jid][1] == before[jid][1] and len(results(a)) == len(read_rows(b))
    assert merge([b], a, on_conflict="replace") == 0 and results(a)[jid][1] == 12.5


def test_failed_edited_and_foreign_teacher_rows(tmp_path, fake, monkeypatch):
    preset = write_preset(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("FAKE_FAIL", "cmi")
    assert run_bench(dbg(preset, a, seeds=[0]), **quiet) == 1  # cmi rows failed
    monkeypatch.delenv("FAKE_FAIL")
    rows_b = bench(preset, b, [0, 1])
    failed_in_a = [j for j, r in read_rows(a).items() if r.status == "failed"]
    assert failed_in_a
    for jid in read_rows(a):
        edit_row(a, jid, teacher_digest="t-a")
    seed1 = [j for j, r in rows_b.items() if r.seed == 1]
    for jid in rows_b:
        edit_row(b, jid, teacher_digest="t-a" if jid not in seed1[:1] else "t-other")
    renamed = seed1[1]
    (b / "rows" / f"{renamed}.json").rename(b / "rows" / "0123456789ab.json")
    plan = plan_merge([str(b)], str(a), resolve=resolve_config)
    assert set(failed_in_a) <= set(plan.add)  # an ok row replaces a failed one
    refused = " ".join(plan.refused)
    assert "teacher t-other vs t-a" in refused and "0123456789ab is not the hash of its config" in refused
    assert seed1[0] not in plan.add
    assert seed1[0] in plan_merge([str(b)], str(a), allow_mixed=True, resolve=resolve_config).add
    assert merge([b], a) == 1
    assert all(r.status == "ok" for r in read_rows(a).values())


def test_fingerprint_ignores_the_seed_only():
    cfg = {"run": {"seed": 0, "dataset": "toy"}, "distill": {"epochs": 1}}
    assert fingerprint(cfg) == fingerprint({**cfg, "run": {"seed": 7, "dataset": "toy"}})
    assert fingerprint(cfg) != fingerprint({**cfg, "distill": {"epochs": 2}})


def test_cli_names_what_is_wrong(tmp_path, capsys):
    from benchmarks.cli import main

    assert main(["merge", str(tmp_path / "nowhere"), "--into", str(tmp_path / "t")]) == 2
    assert "no rows/ folder" in capsys.readouterr().err
