"""benchmarks.synth_cost at tiny sizes: every registered synthesizer is timed and listed."""
import json

from baselines.registry import SYNTHESIZERS
from benchmarks import synth_cost


def test_every_registered_synthesizer_is_timed_and_listed(tmp_path, capsys):
    out = tmp_path / "cost.json"
    argv = ["--batch-size", "4", "--max-steps", "1", "--real-images", "16", "--neuron-backend", "eager",
            "--repeats", "2", "--note", "test run", "--json", str(out)]
    assert synth_cost.main(argv) == 0
    text = capsys.readouterr().out
    assert "randomly initialized" in text and "note: test run" in text
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("synthesizer "))
    listed = {ln.split()[0] for ln in lines[start + 1:-1]}
    names = set(SYNTHESIZERS.names())
    assert names == listed
    rows = {r["synthesizer"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == names
    for name, r in rows.items():
        assert r["calls"] == 2 and r["s_per_call"] > 0 and r["s_per_image"] > 0, name
        assert r["images_per_call"] == (16 if name == "real" else 4), name
    assert rows["nayer"]["config"]["warmup"] == 0 and rows["dfq"]["config"]["iterations"] == 1


def test_budgets_follow_the_evidence_preset():
    b = synth_cost.budgets(["deepinversion", "cmi", "fast", "fast-nometa", "nayer", "dafl", "real"], None, None)
    assert b["deepinversion"] == {"batch_size": 64, "iterations": 60}
    assert b["cmi"]["iterations"] == 40 and b["fast"]["preset"] == "fast-5" and b["fast"]["warmup"] == 0
    assert b["fast-nometa"]["preset"] == "fast-5"
    assert b["nayer"]["g_steps"] == 15 and b["nayer"]["batch_size"] == 64
    assert b["dafl"] == {"iterations": 1, "batch_size": 64} and b["real"] == {"batch_size": 0}
