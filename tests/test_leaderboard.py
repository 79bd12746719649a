"""The leaderboard and plots: statistics checked by hand, tables and PNGs built from rows alone."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import leaderboard as lb
from benchmarks import plots, stats
from benchmarks.jobs import job_label
from benchmarks.store import write_row
from baselines.config import config_hash

BASELINES_MD = Path(__file__).resolve().parents[2] / "shared" / "reference" / "baselines.md"


# --------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("df,q", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622),
                                  (29, 2.0452), (1000, 1.9623)])
def test_t_quantile_matches_the_t_table(df, q):
    assert stats.t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)
    assert stats.t_quantile(0.025, df) == pytest.approx(-q, abs=1e-4)


def test_mean_std_is_the_sample_std():
    assert stats.mean_std([80.0, 82.0, 84.0]) == (82.0, 2.0, 3)
    m, s, n = stats.mean_std([70.0, None, float("nan")])
    assert (m, n) == (70.0, 1) and math.isnan(s)
    assert stats.mean_std([])[2] == 0


def test_paired_difference_ci_by_hand():
    # d = (2, 3, 4): mean 3, sd 1, half-width t_{.975,2} / sqrt(3) = 4.302653 / 1.732051 = 2.484138
    d = stats.diff_ci({0: 80.0, 1: 82.0, 2: 84.0}, {0: 78.0, 1: 79.0, 2: 80.0})
    assert d["method"] == "paired" and d["n"] == 3 and d["mean"] == pytest.approx(3.0)
    assert d["lo"] == pytest.approx(3 - 2.484138, abs=1e-5) and d["hi"] == pytest.approx(3 + 2.484138, abs=1e-5)
    assert stats.fmt_diff(d) == "+3.00 [+0.52, +5.48] (paired, n=3)"


def test_unpaired_difference_uses_welch_and_single_seeds_have_no_ci():
    # groups (1, 3) and (5, 9): diff -5, se = sqrt(2/2 + 8/2) = sqrt(5), Welch df = 25 / (1 + 16) = 1.470588
    d = stats.diff_ci({0: 1.0, 1: 3.0}, {2: 5.0, 3: 9.0})
    assert d["method"] == "welch" and d["mean"] == pytest.approx(-5.0)
    half = stats.t_quantile(0.975, 25 / 17) * math.sqrt(5)
    assert d["hi"] - d["mean"] == pytest.approx(half)
    one = stats.diff_ci({0: 61.0}, {0: 60.0})
    assert one["mean"] == pytest.approx(1.0) and stats.fmt_diff(one) == "+1.00 (n<2: no CI)"
    assert stats.fmt_diff(stats.diff_ci({0: 61.0}, {})) == "-"


@pytest.mark.parametrize("sd", [0.5, 1.0, 1.6, 4.7, 12.0, 30.0])
def test_seeds_for_half_width_is_the_smallest_n_whose_interval_fits(sd):
    n = stats.seeds_for_half_width(sd, 2.0)

    def half(k):
        return stats.t_quantile(0.975, k - 1) * sd / math.sqrt(k)
    assert n >= 2 and half(n) <= 2.0 and (n == 2 or half(n - 1) > 2.0)
    assert stats.seeds_for_half_width(1.6, 2.0) == 5  # the sd 5 seeds can resolve to ±2
    assert stats.seeds_for_half_width(float("nan"), 2.0) is None
    assert stats.seeds_for_half_width(1e6, 2.0) is None  # beyond any run: no number


# --------------------------------------------------------------------------- rows -> tables
def row(synth, regs, seed, acc, dataset="fashion-mnist", teacher="smallcnn", student="spiking_smallcnn",
        status="ok", error=None, **kw):
    r = {"dataset": dataset, "teacher": teacher, "student": student, "T": 4, "synthesizer": synth,
         "regularizers": [{"name": x, "params": {}} for x in regs], "seed": seed, "teacher_acc": 90.0,
         "student_acc": acc, "student_acc_best": acc, "firing_rate": 0.2 if regs else 0.1,
         "sops_per_image": 2e5, "images_synthesized": 100, "synthesis_seconds": 50.0 if regs else 40.0,
         "distill_seconds": 10.0, "status": status, "error": error,
         "config": {"run": {"train_subset": 20000, "test_subset": 2000}, "distill": {"epochs": 4, "kd_steps": 10,
                                                                                    "synth_batches": 1, "batch_size": 64}}}
    r.update(kw)
    r["job_label"] = job_label(dataset, teacher, student, synth, regs, seed)
    r["job_id"] = config_hash({"l": r["job_label"]})
    return r


STARS_DIAG = {"start": {"stars": {"t0_s0/teacher_tail_mass": 0.05, "t0_s0/student_firing_prob": 0.30,
                                  "t1_s1/teacher_tail_mass": 0.04, "t1_s1/student_firing_prob": 0.20,
                                  "t0_s0/tail_gap": 0.25, "pooled/relational_discrepancy": 0.1}},
              "end": {"stars": {"t0_s0/teacher_tail_mass": 0.05, "t0_s0/student_firing_prob": 0.08,
                                "t1_s1/teacher_tail_mass": 0.04, "t1_s1/student_firing_prob": 0.05}}}


def synthetic_rows() -> list[dict]:
    rows = []
    for seed, (wo, w) in enumerate([(78.0, 80.0), (79.0, 82.0), (80.0, 84.0)]):
        rows.append(row("deepinversion", [], seed, wo))
        rows.append(row("deepinversion", ["stars"], seed, w, diagnostics=STARS_DIAG))
        rows.append(row("real", [], seed, 88.0 + seed))
    rows.append(row("cmi", [], 0, 70.0))
    rows.append(row("noise", [], 0, 20.0))
    rows.append(row("scratch", [], 0, 85.0, teacher_acc=None))
    rows.append(row("cmi", ["stars"], 0, None, status="failed", error="Traceback...\nNonFiniteLossError: loss became nan"))
    rows.append(row("deepinversion", [], 0, 61.0, dataset="cifar10", teacher="resnet34", student="spiking_resnet18"))
    return rows


def write_rows(out: Path, rows: list[dict]) -> None:
    for r in rows:
        write_row(out / "rows", r["job_id"], r)


def test_summary_table_numbers(tmp_path):
    df = lb.frame(synthetic_rows())
    t = lb.summary_table(df[df["status"] == "ok"], "fashion-mnist").set_index("synthesizer")
    di = t.loc["deepinversion"]
    assert di["without stars"] == "79.00 ± 1.00 (n=3)"
    assert di["with stars"] == "82.00 ± 2.00 (n=3)"
    assert di["difference (95% CI)"] == "+3.00 [+0.52, +5.48] (paired, n=3)"
    assert di["teacher"] == "90.00" and di["real KD"] == "89.00 ± 1.00 (n=3)"
    assert di["synth s/image (w/o / w/)"] == "0.400 / 0.500" and di["firing rate (w/o / w/)"] == "0.100 / 0.200"
    assert t.loc["cmi"]["with stars"] == "-" and t.loc["cmi"]["without stars"] == "70.00 (n=1)"
    assert t.loc["noise (reference)"]["without stars"] == "20.00 (n=1)"
    assert t.loc["scratch (reference)"]["without stars"] == "85.00 (n=1)"
    assert lb.PUBLISHED_SOURCE not in t.columns  # no published setting matches fashion-mnist
    c = lb.summary_table(df[df["status"] == "ok"], "cifar10").set_index("synthesizer")
    assert c.loc["deepinversion"][lb.PUBLISHED_SOURCE] == "93.26 (DeepInv-2k)"


def test_seeds_table_plans_from_the_paired_spread(tmp_path):
    """Paired differences (2, 3, 4): sd 1, half-width 2.48 at n = 3; ±2 needs n = 4
    (t(0.975, 3) / 2 = 1.59). Cells without two paired seeds are left out."""
    df = lb.frame(synthetic_rows())
    t = lb.seeds_table(df[df["status"] == "ok"], "fashion-mnist")
    assert list(t["synthesizer"]) == ["deepinversion"]  # cmi+stars failed: nothing paired
    r = t.iloc[0]
    assert (r["paired seeds"], r["sd of paired differences"], r["95% half-width now"], r["seeds for ±2"]) == \
        (3, "1.00", "2.48", "4")
    write_rows(tmp_path, synthetic_rows())
    lb.write_report(tmp_path, plots=False)
    assert "seeds needed" in (tmp_path / "leaderboard.md").read_text()


def _pm_rejection_rate(sd_y: float, rho: float, n: int = 5, trials: int = 2000, seed: int = 0) -> float:
    import numpy as np

    rng = np.random.default_rng(seed)
    rejected = 0
    for _ in range(trials):
        z = rng.standard_normal((n, 2))
        x, y = z[:, 0], sd_y * (rho * z[:, 0] + math.sqrt(1 - rho * rho) * z[:, 1])
        rejected += stats.pitman_morgan(x, y)["p"] < 0.05
    return rejected / trials


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_pitman_morgan_holds_its_level_on_correlated_pairs_and_finds_a_tenfold_spread(rho):
    """Equal variances, pairs correlated as runs sharing random streams are: ~5% of 2,000
    simulated 5-seed experiments reject at 0.05 (an F test of independent groups rejects
    far less often at rho 0.9). A 10x smaller sd is found in most of them."""
    assert 0.035 <= _pm_rejection_rate(1.0, rho) <= 0.065
    assert _pm_rejection_rate(0.1, rho, trials=300) > 0.9


def test_pitman_morgan_is_the_correlation_of_sums_and_differences():
    """r(x + y, x - y) = (F - 1) / sqrt((F + 1)^2 - 4 rho^2 F), F = var x / var y, rho = r(x, y);
    swapping x and y flips r's sign, not p."""
    import numpy as np

    rng = np.random.default_rng(3)
    x, y = rng.normal(50, 6, 6), rng.normal(52, 1, 6)
    pm = stats.pitman_morgan(x, y)
    F, rho = np.var(x, ddof=1) / np.var(y, ddof=1), np.corrcoef(x, y)[0, 1]
    assert pm["r"] == pytest.approx((F - 1) / math.sqrt((F + 1) ** 2 - 4 * rho * rho * F), rel=1e-9)
    swapped = stats.pitman_morgan(y, x)
    assert swapped["r"] == pytest.approx(-pm["r"]) and swapped["p"] == pytest.approx(pm["p"])
    assert pm["ratio"] == pytest.approx(np.std(y, ddof=1) / np.std(x, ddof=1))
    assert math.isnan(stats.pitman_morgan([1.0, 2.0], [3.0, 5.0])["p"])  # n < 3: no test


def test_spread_table_compares_the_seeds_spread_with_and_without(tmp_path):
    """Without (78, 79, 80), with (80, 82, 84): sd 1 vs 2; sums and differences lie on a line
    (r = -1), so p = 0. Cells with fewer than 3 paired seeds are left out."""
    df = lb.frame(synthetic_rows())
    t = lb.spread_table(df[df["status"] == "ok"], "fashion-mnist")
    assert list(t["synthesizer"]) == ["deepinversion"]
    r = t.iloc[0]
    assert (r["paired seeds"], r["sd w/o"], r["sd w/"], r["sd ratio w/ : w/o"], r["Pitman-Morgan p"]) == \
        (3, "1.00", "2.00", "2.00", "0.000")
    write_rows(tmp_path, synthetic_rows())
    lb.write_report(tmp_path, plots=False)
    assert "seed-to-seed spread" in (tmp_path / "leaderboard.md").read_text()


def test_teacher_column_counts_teachers_not_rows():
    """3 seeds -> 3 teachers, whatever the number of rows per seed."""
    rows = []
    for seed, t_acc in enumerate([84.0, 85.0, 86.0]):
        for synth, regs in (("deepinversion", []), ("deepinversion", ["stars"]), ("cmi", []), ("real", [])):
            r = row(synth, regs, seed, 70.0, teacher_acc=t_acc)
            r["config"] = {"run": {"seed": seed, "teacher_epochs": 2, "train_subset": None}}
            rows.append(r)
    df = lb.frame(rows)
    t = lb.summary_table(df, "fashion-mnist").set_index("synthesizer")
    assert t.loc["deepinversion"]["teacher"] == "85.00 ± 1.00 (n=3)"


def test_treatment_names_the_with_columns():
    """A third-party regularizer set as the treatment gets the same with / without table."""
    rows = [row("deepinversion", regs, seed, acc) for seed in (0, 1)
            for regs, acc in (([], 70.0 + seed), (["logit-norm"], 72.0 + 2 * seed), (["stars"], 50.0))]
    df = lb.frame(rows, treatment=["logit-norm"])
    t = lb.summary_table(df, "fashion-mnist").set_index("synthesizer")
    assert t.loc["deepinversion"]["with logit-norm"] == "73.00 ± 1.41 (n=2)"
    assert t.loc["deepinversion"]["difference (95% CI)"].startswith("+2.50")
    assert "with logit-norm" in lb.leaderboard_markdown(df)


def test_published_numbers_match_only_the_same_setting():
    assert lb.published("cifar100", "vgg11", "spiking_resnet18", "fast") == [("Fast-10", 67.44)]
    assert [a for _, a in lb.published("cifar10", "resnet34", "resnet18", "fast")] == [92.62, 94.05]
    assert lb.published("cifar10", "resnet18", "spiking_resnet18", "deepinversion") == []
    assert lb.published("cifar100", "resnet34", "spiking_resnet18", "noise") == []


@pytest.mark.skipif(not BASELINES_MD.is_file(), reason="shared/reference/baselines.md not present")
def test_published_table_is_transcribed_from_baselines_md():
    text = BASELINES_MD.read_text()
    names = {"Teacher": "teacher", "DeepInv-2k": "deepinversion", "CMI-500": "cmi", "Fast-2": "fast",
             "Fast-10": "fast", "KD with real data": "real"}
    pairs = {"R34->R18": ("resnet34", "resnet18"), "VGG11->R18": ("vgg11", "resnet18"),
             "WRN40-2->WRN16-1": ("wrn40_2", "wrn16_1")}
    found = set()
    for block in re.findall(r"\| (CIFAR-10|CIFAR-100) \|([^\n]*)\n\|[-|]+\n((?:\|[^\n]*\n)+)", text):
        ds = block[0].lower().replace("-", "")
        cols = [c.strip() for c in block[1].strip(" |").split("|")]
        for line in block[2].strip().splitlines():
            cells = [c.strip() for c in line.strip(" |").split("|")]
            for col, cell in zip(cols, cells[1:]):
                acc = float(cell.split()[0])
                found.add((ds, *pairs[col], cells[0], names[cells[0]], acc))
    assert found == set(lb.PUBLISHED)


def test_write_report_builds_csv_markdown_and_plots_from_rows(tmp_path):
    rows = synthetic_rows()
    write_rows(tmp_path, rows)
    (tmp_path / "jobs" / rows[1]["job_id"]).mkdir(parents=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    plt.imsave(tmp_path / "jobs" / rows[1]["job_id"] / "samples.png", np.random.rand(16, 16, 3))
    paths = lb.write_report(tmp_path)
    csv = pd.read_csv(paths["csv"])
    assert len(csv) == len(rows) and set(csv["status"]) == {"ok", "failed"}
    assert set(csv.loc[csv["synthesizer"] == "deepinversion", "regularizers"]) == {"none", "stars"}
    md = (tmp_path / "leaderboard.md").read_text()
    assert "## fashion-mnist" in md and "## cifar10" in md
    assert "+3.00 [+0.52, +5.48] (paired, n=3)" in md
    assert "## Failed runs" in md and "NonFiniteLossError: loss became nan" in md
    assert "fashion-mnist/smallcnn:spiking_smallcnn/cmi+stars/seed0" in md
    assert "| 20000 | 2000 |" in md  # the subsets used are recorded under settings
    for name in ("accuracy.png", "accuracy_vs_time.png", "samples.png", "tar_diagnostics.png"):
        p = tmp_path / "plots" / name
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"plots/{name}" in md


def test_plots_without_their_data_are_skipped_with_a_note(tmp_path):
    rows = [r for r in synthetic_rows() if r["synthesizer"] != "deepinversion" or not r["regularizers"]]
    for r in rows:
        r.pop("diagnostics", None)
    write_rows(tmp_path, rows)
    paths = lb.write_report(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "plot 'synthetic samples' skipped" in md and "plot 'TAR diagnostics' skipped" in md
    assert not (tmp_path / "plots" / "samples.png").exists()
    assert "accuracy by synthesizer" in paths["plots"]


def test_tar_series_reads_the_flat_stars_form_and_list_forms():
    s = plots.tar_series(STARS_DIAG)
    labels, tail, fire = s["start"]["stars"]
    assert labels == ["t0_s0", "t1_s1"] and tail == [0.05, 0.04] and fire == [0.30, 0.20]
    alt = plots.tar_series({"end": {"tar": {"teacher_tail": [0.1, 0.2], "student_firing": {"a": 0.3, "b": 0.4}}}})
    assert alt["end"]["tar"][1:] == ([0.1, 0.2], [0.3, 0.4])
    assert plots.tar_series({"start": "garbage"}) == {} and plots.tar_series(None) == {}


def test_dfkd_report_rebuilds_from_rows_alone(tmp_path, capsys):
    from benchmarks import cmd_report

    write_rows(tmp_path, synthetic_rows())
    assert cmd_report.main([str(tmp_path), "--no-plots"]) == 0
    assert (tmp_path / "leaderboard.md").is_file() and not (tmp_path / "plots").exists()
    assert "leaderboard.md" in capsys.readouterr().out
    assert cmd_report.main([str(tmp_path / "empty")]) == 2
    assert "no rows" in capsys.readouterr().err


def test_cost_table_gives_shares_of_the_timed_synthesis_seconds():
    timing = {"teacher_forward": 1.0, "student_forward": 2.0, "backward": 5.0, "regularizers": 0.0, "other": 2.0}
    rows = [row("deepinversion", [], s, 50.0, synth_timing=timing, device="cpu") for s in range(2)]
    rows.append(row("deepinversion", ["stars"], 0, 50.0, device="cpu",
                    synth_timing=dict(timing, regularizers=10.0)))
    rows.append(row("noise", [], 0, 10.0, synth_timing=timing))  # references are not synthesis
    df = lb.frame(rows)
    t = lb.cost_table(df, "fashion-mnist").set_index("regularizers")
    assert list(t.index) == ["none", "stars"]
    assert t.loc["none", "teacher forward"] == "10%" and t.loc["none", "backward"] == "50%"
    assert t.loc["stars", "regularizer terms"] == "50%" and t.loc["stars", "device"] == "cpu"
    assert t.loc["none", "synth s/image"] == "0.400"
    assert "synthesis cost" in lb.leaderboard_markdown(df)


def test_rows_of_another_config_in_a_cell_are_named_not_silently_averaged(tmp_path, capsys):
    """A `--set` run (another job id) copied into a directory lands in the same cell and seed
    as the default run; the report must say so (warning section + stderr), and must stay
    quiet when every cell x seed holds one job."""
    from benchmarks import cmd_report

    write_rows(tmp_path, synthetic_rows())
    assert cmd_report.main([str(tmp_path), "--no-plots"]) == 0
    assert "mixed configs" not in (tmp_path / "leaderboard.md").read_text()
    assert "warning" not in capsys.readouterr().err
    other = row("deepinversion", ["stars"], 1, 60.0)
    other["job_id"] = config_hash({"l": other["job_label"], "stars.alpha": 0.1})
    write_rows(tmp_path, [other])
    assert cmd_report.main([str(tmp_path), "--no-plots"]) == 0
    md = (tmp_path / "leaderboard.md").read_text()
    assert "mixed configs" in md and other["job_id"] in md
    mixed = lb.mixed_cells(lb.frame(synthetic_rows() + [other]))
    assert len(mixed) == 2 and set(mixed["job"]) == {other["job_label"]}
    assert "share a cell and a seed" in capsys.readouterr().err


def test_rows_from_two_teachers_of_one_pair_are_flagged_by_digest_or_by_accuracy(tmp_path, capsys):
    same = synthetic_rows()
    for r in same:
        r["teacher_digest"] = "aaaa"
    assert len(lb.mixed_teachers(lb.frame(same))) == 0
    md = lb.leaderboard_markdown(lb.frame(same))
    assert "more than one teacher" not in md
    # one seed's pair made with a retrained teacher: same name, path and seed, other weights
    two = synthetic_rows()
    for r in two:
        r["teacher_digest"] = "bbbb" if r["seed"] == 2 and r["dataset"] == "fashion-mnist" else "aaaa"
    t = lb.mixed_teachers(lb.frame(two))
    assert set(t["teacher"]) == {"aaaa", "bbbb"} and set(t["told apart by"]) == {"weights digest"}
    assert t.set_index("teacher").loc["bbbb", "seeds"] == "2"
    assert set(t["dataset"]) == {"fashion-mnist"}  # the cifar10 pair has one teacher
    assert "more than one teacher" in lb.leaderboard_markdown(lb.frame(two))
    from benchmarks import cmd_report

    write_rows(tmp_path, two)
    assert cmd_report.main([str(tmp_path), "--no-plots"]) == 0
    assert "more than one teacher" in (tmp_path / "leaderboard.md").read_text()
    assert "used more than one teacher" in capsys.readouterr().err
    # rows made before digests were recorded: told apart by teacher accuracy beyond the tolerance
    old = synthetic_rows()
    for r in old:
        if r["seed"] == 2 and r.get("teacher_acc") is not None:
            r["teacher_acc"] = 90.0 + 2 * lb.TEACHER_ACC_TOLERANCE
    t = lb.mixed_teachers(lb.frame(old))
    assert set(t["told apart by"]) == {"teacher accuracy"} and len(t) == 2
    # ... but not within it (one GPU teacher evaluated twice: 94.25 / 94.30 on one test subset)
    for r in old:
        if r["seed"] == 2 and r.get("teacher_acc") is not None:
            r["teacher_acc"] = 90.0 + lb.TEACHER_ACC_TOLERANCE / 2
    assert len(lb.mixed_teachers(lb.frame(old))) == 0


def test_rows_from_two_machines_of_one_pair_are_flagged(tmp_path, capsys):
    """A paired difference across two CPU models measures the machines too: the leaderboard and
    `dfkd report` flag a pair whose rows name more than one machine, and not one whose rows
    name one (or, for older rows, one platform string)."""
    one = synthetic_rows()
    for r in one:
        r["versions"] = {"cpu": "CPU A; kernels AVX2", "platform": "p1"}
    assert len(lb.mixed_hosts(lb.frame(one))) == 0
    assert "more than one machine" not in lb.leaderboard_markdown(lb.frame(one))
    two = synthetic_rows()
    for r in two:
        on_b = r["seed"] == 1 and r["dataset"] == "fashion-mnist"
        r["versions"] = {"cpu": "CPU B; kernels AVX512" if on_b else "CPU A; kernels AVX2", "platform": "p1"}
    h = lb.mixed_hosts(lb.frame(two))
    assert set(h["machine"]) == {"CPU A; kernels AVX2", "CPU B; kernels AVX512"}
    assert h.set_index("machine").loc["CPU B; kernels AVX512", "seeds"] == "1"
    assert set(h["dataset"]) == {"fashion-mnist"}  # the cifar10 pair ran on one machine
    assert "more than one machine" in lb.leaderboard_markdown(lb.frame(two))
    # rows from before the CPU was recorded: their platform strings stand in for it
    old = synthetic_rows()
    for r in old:
        r["versions"] = {"platform": "p2" if r["seed"] == 2 else "p1"}
    assert set(lb.mixed_hosts(lb.frame(old))["machine"]) == {"platform p1", "platform p2"}
    # a CUDA row is named by its GPU
    gpu = row("cmi", [], 0, 70.0, device="cuda", versions={"cpu": "CPU A; kernels AVX2", "gpu": "NVIDIA H200"})
    assert lb.frame([gpu])["host"].iloc[0] == "NVIDIA H200"
    from benchmarks import cmd_report

    write_rows(tmp_path, two)
    assert cmd_report.main([str(tmp_path), "--no-plots"]) == 0
    assert "more than one machine" in (tmp_path / "leaderboard.md").read_text()
    assert "come from more than one machine" in capsys.readouterr().err
