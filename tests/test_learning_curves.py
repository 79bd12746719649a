"""benchmarks.learning_curves: the KD steps and images behind each evaluation are counted
from the row's history (warm-up epochs run no KD step), skipped rows are named, and the
command fails clearly when nothing is left."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import learning_curves as lc

EVIDENCE = Path(__file__).resolve().parents[1] / "results" / "evidence-avx512"


def _row(label="ds/t:s/fast/seed0", status="ok", warmup=1, epochs=4, kd_steps=10, per_epoch=64, evals=(1, 3)):
    hist = []
    for e in range(epochs):
        rec = {"epoch": e, "kd_loss": None if e < warmup else 1.0 / (e + 1), "pool": per_epoch * (e + 1), "lr": 0.1}
        if e in evals:
            rec["test_acc"] = 10.0 * (e + 1)
        hist.append(rec)
    return {"job_label": label, "status": status, "synthesizer": label.split("/")[2].split("+")[0], "seed": 0,
            "regularizers": [], "history": hist, "config": {"distill": {"kd_steps": kd_steps, "epochs": epochs, "lr": 0.1}}}


def test_warmup_epochs_add_no_kd_steps():
    pts = lc.curve_points(_row(warmup=1, kd_steps=10, evals=(1, 3)))
    assert [(p["epoch"], p["kd_steps"], p["images"], p["test_acc"]) for p in pts] == [
        (2, 10, 128, 20.0), (4, 30, 256, 40.0)]
    pts = lc.curve_points(_row(warmup=0, kd_steps=10, evals=(3,)))
    assert pts[-1]["kd_steps"] == 40


def test_committed_rows_count_their_own_budget():
    rows, _ = lc.load_rows([EVIDENCE], ["*/seed0"])
    assert rows, "results/evidence-avx512 holds seed-0 rows"
    for row in rows:
        d, last = row["config"]["distill"], lc.curve_points(row)[-1]
        kd_epochs = d["epochs"] - int(row.get("kd_warmup_epochs") or 0)
        assert last["kd_steps"] == kd_epochs * d["kd_steps"]
        assert last["test_acc"] == pytest.approx(row["student_acc"])
        if row["synthesizer"] not in ("real", "noise"):
            assert last["images"] == row["images_synthesized"]


def test_skipped_rows_are_named_and_filters_apply(tmp_path, capsys):
    (tmp_path / "rows").mkdir()
    for i, r in enumerate([_row(), _row("ds/t:s/cmi/seed0"), _row("ds/t:s/cmi/seed1", status="failed")]):
        (tmp_path / "rows" / f"{i}.json").write_text(json.dumps(r))
    (tmp_path / "rows" / "9.json").write_text('{"job_label": "ds/t:s/cmi/seed2", "hist')  # truncated
    rows, notes = lc.load_rows([tmp_path], ["*/cmi/*"])
    assert [r["job_label"] for r in rows] == ["ds/t:s/cmi/seed0"]
    assert len(notes) == 2 and "failed" in notes[0] and "9.json: skipped (unreadable" in notes[1]
    png = tmp_path / "c.png"
    assert lc.main([str(tmp_path), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.count("| ds/t:s/") == 4 and png.read_bytes()[:4] == b"\x89PNG"


def test_nothing_to_show_is_a_clear_error(tmp_path, capsys):
    assert lc.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no rows/*.json" in err and "no ok row" in err
