"""benchmarks.compare: cells matched across two output directories, paired by seed."""
import json
import math

import pytest

from benchmarks import cmd_compare, compare


def _write(out, synth, regs, accs, status="ok", cpu=None):
    (out / "rows").mkdir(parents=True, exist_ok=True)
    for seed, acc in enumerate(accs):
        row = {"dataset": "toy", "teacher": "t", "student": "s", "synthesizer": synth,
               "regularizers": regs, "seed": seed, "status": status, "student_acc": acc,
               "device": "cpu", "versions": {"cpu": cpu} if cpu else {}}
        (out / "rows" / f"{synth}-{'+'.join(regs) or 'none'}-{seed}.json").write_text(json.dumps(row))


def test_paired_difference_matches_hand_computation(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "cmi", ["stars"], [10.0, 20.0, 30.0])
    _write(b, "cmi", ["stars"], [12.0, 23.0, 31.0])  # d = 2, 3, 1
    _write(b, "fast", ["stars"], [50.0, 50.0, 50.0])  # no counterpart in a: left out
    table = compare.compare(compare.ok_frame(a), compare.ok_frame(b), "A", "B")
    assert list(table["synthesizer"]) == ["cmi"]
    half = 4.302653 * 1.0 / math.sqrt(3)  # t_{0.975, 2} * sd(d) / sqrt(n)
    cell = table["B - A (95% CI)"].iloc[0]
    assert cell == f"+2.00 [{2 - half:+.2f}, {2 + half:+.2f}] (paired, n=3)"
    from benchmarks.cli import main as dfkd
    assert dfkd(["compare", str(a), str(b), "--out", str(tmp_path / "t.md")]) == 0
    assert "paired, n=3" in capsys.readouterr().out and "paired, n=3" in (tmp_path / "t.md").read_text()


def test_failed_rows_are_left_out_and_empty_dirs_are_an_error(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "cmi", [], [10.0, 20.0])
    _write(b, "cmi", [], [11.0, 21.0], status="failed")
    assert cmd_compare.main([str(a), str(b)]) == 1  # nothing ok in b: no common cell
    assert cmd_compare.main([str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "holds no rows" in err


def test_across_regularizers_pairs_a_stars_run_with_a_plain_one(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "cmi", [], [10.0, 20.0])
    _write(b, "cmi", ["stars"], [13.0, 21.0])
    assert compare.compare(compare.ok_frame(a), compare.ok_frame(b)).empty  # different cells
    t = compare.compare(compare.ok_frame(a), compare.ok_frame(b), across_regularizers=True)
    assert t["regularizers"].iloc[0] == "none -> stars"
    assert t["B - A (95% CI)"].iloc[0].startswith("+2.00 [")
    _write(b, "cmi", [], [0.0, 0.0])  # two sets on one side: ambiguous
    with pytest.raises(compare.DFKDError, match="several regularizer sets"):
        compare.compare(compare.ok_frame(a), compare.ok_frame(b), across_regularizers=True)


def test_a_comparison_across_two_machines_says_so(tmp_path, capsys):
    """Default and tuned arms computed on two CPU models differ by the machines too: the
    comparison carries a warning naming both; on one machine it does not."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _write(a, "cmi", ["stars"], [10.0, 20.0], cpu="CPU A; kernels AVX2")
    _write(b, "cmi", ["stars"], [12.0, 21.0], cpu="CPU A; kernels AVX2")
    _write(c, "cmi", ["stars"], [12.0, 21.0], cpu="CPU B; kernels AVX512")
    assert cmd_compare.main([str(a), str(b)]) == 0
    assert "more than one machine" not in capsys.readouterr().out
    assert cmd_compare.main([str(a), str(c)]) == 0
    out = capsys.readouterr().out
    assert "more than one machine" in out and "CPU A; kernels AVX2" in out and "CPU B; kernels AVX512" in out
