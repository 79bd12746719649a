"""The leaderboard: DIR/rows/*.json -> results.csv (+ results.parquet), leaderboard.md, plots.

Everything is computed from the rows alone (``dfkd report DIR`` rebuilds it). Accuracy is
the spiking student's top-1 on the real test set at the last evaluation (``student_acc``;
the best-over-evaluations value would select on the test set). Per (pair, synthesizer):

- without / with the treatment (the preset's ``[bench].treatment`` regularizer set, e.g.
  ``stars``; read from the manifest, else the only set other than none): mean +- sample std
  (ddof 1) over seeds, and n;
- difference (with - without) and its 95% confidence interval: a t-interval on the
  per-seed differences d_s = acc_with(s) - acc_without(s) over the seeds both have,
  mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n) (Welch's interval on the two groups when no
  seed pairs up); fewer than 2 values gives no interval ("n<2: no CI");
- teacher accuracy (one value per distinct teacher, not per row), the ``real`` KD upper reference, synthesis seconds per image, the
  student's firing rate and synaptic operations (SOPs) per image;

the seeds-needed planning table and the seed-to-seed spread (sd without / with a regularizer
set, Pitman-Morgan test for paired runs); plus the ``noise`` and ``scratch`` reference rows, the published ANN->ANN numbers of the
Fast-DFKD paper (Table 1) where dataset, teacher and student (ANN name, ``spiking_``
prefix removed) match, and the failed runs with their errors. Statistics: ``stats.py``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .frame import (NONE, REFERENCE_SYNTHS, TIMING_PARTS, by_seed as _by_seed, frame, load_rows, mean_of as _mean,
                    treatment_label)
from .stats import (_finite, _int, _num, _pair_num, diff_ci, fmt_diff, fmt_ms, md_table, mean_std, pitman_morgan,
                    seeds_for_half_width)
from .store import corrupt_rows, read_manifest, treatment_of
from .table_checks import TEACHER_ACC_TOLERANCE, mixed_cells, mixed_hosts, mixed_teachers  # noqa: F401 - re-exported

#: Published top-1 (%) of ANN students, Fang et al., "Up to 100x Faster Data-free Knowledge
#: Distillation" (AAAI 2022), Table 1, as collected in shared/reference/baselines.md:
#: (dataset, teacher, ANN student, method as printed, our synthesizer name, accuracy).
PUBLISHED_SOURCE = "published (ANN->ANN, Fast-DFKD Table 1)"
#: the paired 95% half-width (accuracy points) the seeds table plans for (issue 10's target)
PLANNING_HALF_WIDTH = 2.0
PUBLISHED: tuple[tuple[str, str, str, str, str, float], ...] = (
    ("cifar10", "resnet34", "resnet18", "Teacher", "teacher", 95.70),
    ("cifar10", "vgg11", "resnet18", "Teacher", "teacher", 92.25),
    ("cifar10", "wrn40_2", "wrn16_1", "Teacher", "teacher", 94.87),
    ("cifar10", "resnet34", "resnet18", "DeepInv-2k", "deepinversion", 93.26),
    ("cifar10", "vgg11", "resnet18", "DeepInv-2k", "deepinversion", 90.36),
    ("cifar10", "wrn40_2", "wrn16_1", "DeepInv-2k", "deepinversion", 83.04),
    ("cifar10", "resnet34", "resnet18", "CMI-500", "cmi", 94.84),
    ("cifar10", "vgg11", "resnet18", "CMI-500", "cmi", 91.13),
    ("cifar10", "wrn40_2", "wrn16_1", "CMI-500", "cmi", 90.01),
    ("cifar10", "resnet34", "resnet18", "Fast-2", "fast", 92.62),
    ("cifar10", "vgg11", "resnet18", "Fast-2", "fast", 84.67),
    ("cifar10", "wrn40_2", "wrn16_1", "Fast-2", "fast", 88.36),
    ("cifar10", "resnet34", "resnet18", "Fast-10", "fast", 94.05),
    ("cifar10", "vgg11", "resnet18", "Fast-10", "fast", 90.53),
    ("cifar10", "wrn40_2", "wrn16_1", "Fast-10", "fast", 89.29),
    ("cifar100", "resnet34", "resnet18", "Teacher", "teacher", 78.05),
    ("cifar100", "vgg11", "resnet18", "Teacher", "teacher", 71.32),
    ("cifar100", "wrn40_2", "wrn16_1", "Teacher", "teacher", 75.83),
    ("cifar100", "resnet34", "resnet18", "KD with real data", "real", 77.87),
    ("cifar100", "vgg11", "resnet18", "KD with real data", "real", 75.07),
    ("cifar100", "wrn40_2", "wrn16_1", "KD with real data", "real", 64.06),
    ("cifar100", "resnet34", "resnet18", "DeepInv-2k", "deepinversion", 61.32),
    ("cifar100", "vgg11", "resnet18", "DeepInv-2k", "deepinversion", 54.13),
    ("cifar100", "wrn40_2", "wrn16_1", "DeepInv-2k", "deepinversion", 53.77),
    ("cifar100", "resnet34", "resnet18", "CMI-500", "cmi", 77.04),
    ("cifar100", "vgg11", "resnet18", "CMI-500", "cmi", 70.56),
    ("cifar100", "wrn40_2", "wrn16_1", "CMI-500", "cmi", 57.91),
    ("cifar100", "resnet34", "resnet18", "Fast-10", "fast", 74.34),
    ("cifar100", "vgg11", "resnet18", "Fast-10", "fast", 67.44),
    ("cifar100", "wrn40_2", "wrn16_1", "Fast-10", "fast", 54.02),
)

def published(dataset: str, teacher: str, student: str, synthesizer: str) -> list[tuple[str, float]]:
    """Published (method label, accuracy) for this setting; the student's ANN name is its
    name without a ``spiking_`` prefix."""
    ann = student[len("spiking_"):] if student.startswith("spiking_") else student
    return [(lab, acc) for (ds, t, s, lab, syn, acc) in PUBLISHED
            if ds == dataset and t == teacher and s == ann and syn == synthesizer]


def teacher_cell(gp: pd.DataFrame) -> str:
    """Teacher accuracy over the distinct teachers of the rows (one value per teacher key)."""
    t = gp[gp["teacher_acc"].notna()].drop_duplicates("teacher_key")["teacher_acc"]
    t_m, t_s, t_n = mean_std(t)
    return "-" if t_n == 0 else (f"{t_m:.2f}" if not (t_s > 1e-9) else fmt_ms(t_m, t_s, t_n))


def summary_table(ok: pd.DataFrame, dataset: str, treatment: str | None = None) -> pd.DataFrame:
    """The leaderboard table of one dataset (ok rows only): without / with ``treatment`` (a
    regularizer-set label; default: the frame's)."""
    treatment = treatment or treatment_label(ok) or "treatment"
    d = ok[ok["dataset"] == dataset]
    recs = []
    pub_any = False
    for pair, gp in d.groupby("pair", sort=True):
        teacher, student = pair.split(":", 1)
        t_cell = teacher_cell(gp)
        real = gp[(gp["synthesizer"] == "real") & (gp["regularizers"] == NONE)]
        real_cell = fmt_ms(*mean_std(real["student_acc"]))
        methods = [s for s in dict.fromkeys(gp["synthesizer"]) if s not in REFERENCE_SYNTHS]
        for synth in methods + [r for r in ("noise", "scratch") if r in set(gp["synthesizer"])]:
            g = gp[gp["synthesizer"] == synth]
            wo, w = g[g["regularizers"] == NONE], g[g["regularizers"] == treatment]
            is_ref = synth in REFERENCE_SYNTHS
            pub = published(dataset, teacher, student, synth)
            pub_any = pub_any or bool(pub)
            recs.append({
                "pair": pair,
                "synthesizer": f"{synth} (reference)" if is_ref else synth,
                f"without {treatment}": fmt_ms(*mean_std(wo["student_acc"])),
                f"with {treatment}": "-" if is_ref else fmt_ms(*mean_std(w["student_acc"])),
                "difference (95% CI)": "-" if is_ref else fmt_diff(diff_ci(_by_seed(w), _by_seed(wo))),
                "teacher": t_cell,
                "real KD": real_cell,
                "synth s/image (w/o / w/)": _pair_num(_mean(wo["synth_s_per_image"]), _mean(w["synth_s_per_image"])),
                "firing rate (w/o / w/)": _pair_num(_mean(wo["firing_rate"]), _mean(w["firing_rate"])),
                "SOPs/image (w/o / w/)": _pair_num(_mean(wo["sops_per_image"]), _mean(w["sops_per_image"])),
                PUBLISHED_SOURCE: ", ".join(f"{a:.2f} ({lab})" for lab, a in pub) or "-",
            })
    table = pd.DataFrame(recs)
    if not pub_any and PUBLISHED_SOURCE in table:
        table = table.drop(columns=[PUBLISHED_SOURCE])
    return table


def ablation_table(ok: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Every (pair, synthesizer, regularizer set) cell with its difference to no regularizer."""
    d = ok[(ok["dataset"] == dataset) & ~ok["synthesizer"].isin(REFERENCE_SYNTHS)]
    recs = []
    for (pair, synth, regs), g in d.groupby(["pair", "synthesizer", "regularizers"], sort=True):
        base = d[(d["pair"] == pair) & (d["synthesizer"] == synth) & (d["regularizers"] == NONE)]
        recs.append({"pair": pair, "synthesizer": synth, "regularizers": regs,
                     "accuracy": fmt_ms(*mean_std(g["student_acc"])),
                     "vs none (95% CI)": "-" if regs == NONE else fmt_diff(diff_ci(_by_seed(g), _by_seed(base))),
                     "firing rate": _num(_mean(g["firing_rate"])),
                     "synth s/image": _num(_mean(g["synth_s_per_image"]))})
    return pd.DataFrame(recs)


def _cells_vs_none(ok: pd.DataFrame, dataset: str) -> Iterable[tuple[str, str, str, dict, dict]]:
    """(pair, synthesizer, regularizer set, accuracy by seed, accuracy by seed without
    regularizers) for every DFKD cell of ``dataset`` that uses a regularizer set."""
    d = ok[(ok["dataset"] == dataset) & ~ok["synthesizer"].isin(REFERENCE_SYNTHS)]
    for (pair, synth, regs), g in d.groupby(["pair", "synthesizer", "regularizers"], sort=True):
        if regs == NONE:
            continue
        base = d[(d["pair"] == pair) & (d["synthesizer"] == synth) & (d["regularizers"] == NONE)]
        yield pair, synth, regs, _by_seed(g), _by_seed(base)


def seeds_table(ok: pd.DataFrame, dataset: str, half_width: float = PLANNING_HALF_WIDTH) -> pd.DataFrame:
    """Per (pair, synthesizer, regularizer set) with >= 2 seeds paired with no regularizer:
    the paired differences' sample std, today's 95% half-width, and the seeds a half-width
    of ``half_width`` points would need at that std (:func:`stats.seeds_for_half_width`)."""
    recs = []
    for pair, synth, regs, mine, base in _cells_vs_none(ok, dataset):
        ci = diff_ci(mine, base)
        if ci["method"] != "paired":
            continue
        need = seeds_for_half_width(ci["sd"], half_width)
        recs.append({"pair": pair, "synthesizer": synth, "regularizers": regs, "paired seeds": ci["n"],
                     "sd of paired differences": f"{ci['sd']:.2f}",
                     "95% half-width now": f"{(ci['hi'] - ci['lo']) / 2:.2f}",
                     f"seeds for ±{half_width:g}": "> 100000" if need is None else str(need)})
    return pd.DataFrame(recs)


def spread_table(ok: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Does a regularizer change how much the outcome moves from seed to seed? Per (pair,
    synthesizer, regularizer set) with >= 3 seeds paired with no regularizer: the seeds'
    sample std without and with it, their ratio, and the Pitman-Morgan test of equal
    variances for paired runs (:func:`stats.pitman_morgan`; the runs of a seed share their
    random streams, so an F test of independent groups does not apply)."""
    recs = []
    for pair, synth, regs, mine, base in _cells_vs_none(ok, dataset):
        common = sorted(set(base) & set(mine), key=str)
        pm = pitman_morgan([base[k] for k in common], [mine[k] for k in common])
        if pm["n"] < 3:
            continue
        recs.append({"pair": pair, "synthesizer": synth, "regularizers": regs, "paired seeds": pm["n"],
                     "sd w/o": _num(pm["sd_x"]), "sd w/": _num(pm["sd_y"]), "sd ratio w/ : w/o": _num(pm["ratio"]),
                     "Pitman-Morgan p": "-" if not math.isfinite(pm["p"]) else f"{pm['p']:.3f}"})
    return pd.DataFrame(recs)


def cost_table(ok: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Synthesis cost per cell: seconds per synthesized image and the share of the timed
    synthesize() seconds spent in teacher forward, student forward, backward, the
    regularizers' terms and the rest (optimizer steps, augmentation, pool), summed over the
    cell's seeds. CPU shares are exact; on a GPU the parts are timed without synchronizing,
    so kernel time lands wherever the host next waits (read the GPU shares loosely)."""
    d = ok[(ok["dataset"] == dataset) & ~ok["synthesizer"].isin(REFERENCE_SYNTHS)]
    recs = []
    for (pair, synth, regs), g in d.groupby(["pair", "synthesizer", "regularizers"], sort=True):
        parts = {p: float(g[f"t_{p}"].sum()) for p in TIMING_PARTS}  # frame() made them float
        total = sum(parts.values())
        rec = {"pair": pair, "synthesizer": synth, "regularizers": regs,
               "device": ", ".join(sorted({str(x) for x in g["device"] if pd.notna(x)})) or "-",
               "synth s/image": _num(_mean(g["synth_s_per_image"]))}
        for p in TIMING_PARTS:
            label = "regularizer terms" if p == "regularizers" else p.replace("_", " ")
            rec[label] = f"{100 * parts[p] / total:.0f}%" if total > 0 else "-"
        recs.append(rec)
    return pd.DataFrame(recs)


def gradshare_table(ok: pd.DataFrame, dataset: str, where: str = "params") -> pd.DataFrame:
    """Each synthesis term's gradient norm relative to the BN-statistics term's, w.r.t. the
    optimized tensors (``where = "params"``: pixels for DeepInversion, generator + latent for
    the generative methods) or the images, at the probed steps (row ``grad_norms``, the mean
    over probed batches), averaged over the cell's seeds. 1.0 = as strong as BN."""
    d = ok[(ok["dataset"] == dataset) & ~ok["synthesizer"].isin(REFERENCE_SYNTHS)]
    recs, terms = [], set()
    for (pair, synth, regs), g in d.groupby(["pair", "synthesizer", "regularizers"], sort=True):
        vals: dict[str, list[float]] = {}
        for gn in g["grad_norms"]:
            if isinstance(gn, dict):
                for k, v in gn.items():
                    w, _, term = k.partition("/")
                    if w == where and term != "bn":
                        vals.setdefault(term, []).extend(_finite([v]))
        if not vals:
            continue
        terms |= set(vals)
        recs.append({"pair": pair, "synthesizer": synth, "regularizers": regs,
                     **{t: f"{_mean(v):.3g}" for t, v in vals.items() if v}})
    cols = ["pair", "synthesizer", "regularizers", *sorted(terms)]
    return pd.DataFrame(recs, columns=cols).fillna("-") if recs else pd.DataFrame()


def settings_table(df: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Budgets actually used per synthesizer (from the rows' configs)."""
    d = df[df["dataset"] == dataset]
    recs = []
    for synth, g in d.groupby("synthesizer", sort=True):
        def vals(col: str) -> str:
            v = sorted({int(x) for x in g[col] if pd.notna(x)})
            return ", ".join(map(str, v)) or "all"
        recs.append({"synthesizer": synth, "T": vals("T"), "epochs": vals("epochs"), "kd_steps": vals("kd_steps"),
                     "synth_batches": vals("synth_batches"), "batch_size": vals("batch_size"),
                     "images (mean)": _int(_mean(g["images_synthesized"])),
                     "train_subset": vals("train_subset"), "test_subset": vals("test_subset"),
                     "seeds": vals("seed")})
    return pd.DataFrame(recs)


def failed_table(df: pd.DataFrame) -> pd.DataFrame:
    f = df[df["status"] != "ok"]
    return pd.DataFrame({"job": f["label"], "id": f["job_id"],
                         "error": [str(e).strip().splitlines()[-1][:300] if e else "(no error recorded)"
                                   for e in f["error"]]})


def flagged_table(df: pd.DataFrame) -> pd.DataFrame:
    """Finished runs whose row carries health flags (``flags``, see baselines.health)."""
    if "flags" not in df:
        return pd.DataFrame()
    f = df[(df["status"] == "ok") & df["flags"].fillna("").astype(str).str.len().gt(0)]
    return pd.DataFrame({"job": f["label"], "id": f["job_id"], "flags": [str(x)[:300] for x in f["flags"]]})


def _section(heading: str, table: pd.DataFrame, caption: str) -> list[str]:
    """A markdown section (heading, caption, table), or nothing when the table is empty."""
    return [heading, "", caption, "", md_table(table), ""] if len(table) else []


def leaderboard_markdown(df: pd.DataFrame, title: str = "Leaderboard",
                         plots: dict[str, str] | None = None, notes: Iterable[str] = (),
                         mixed: pd.DataFrame | None = None, teachers: pd.DataFrame | None = None,
                         hosts: pd.DataFrame | None = None) -> str:
    ok = df[df["status"] == "ok"]
    treat = treatment_label(df) or "treatment"
    out = [f"# {title}", "",
           "Accuracy: top-1 (%) of the spiking student on the real test set (the test subset where one is "
           "listed under Settings), at the last evaluation. mean ± sample std over seeds (n = seeds). "
           f"Difference = with {treat} − without, with a 95% t-interval on the per-seed paired differences "
           f"(Welch when no seed pairs up; n<2: no CI). Columns `w/o / w/` give the value without / with {treat}. "
           "SOPs = synaptic operations.", ""]
    mixed = mixed_cells(df) if mixed is None else mixed
    if len(mixed):
        out += ["**Warning: mixed configs.** These rows share a cell and a seed but are different jobs "
                "(another config, e.g. a `--set` run copied into this directory); the tables below average "
                "them as one cell. Move the rows of the other config to their own output directory.", "",
                md_table(mixed), ""]
    teachers = mixed_teachers(df) if teachers is None else teachers
    if len(teachers):
        out += ["**Warning: more than one teacher.** These pairs' rows used different teachers (another "
                "checkpoint, or one retrained: GPU training is not bit-reproducible); a difference between two "
                "rows made with different teachers measures the teachers too.", "", md_table(teachers), ""]
    hosts = mixed_hosts(df) if hosts is None else hosts
    if len(hosts):
        out += ["**Warning: more than one machine.** These pairs' rows were computed on different machines; "
                "the same seed gives the same numbers on one CPU model only (its instruction set and caches "
                "choose the kernels and the order of their sums), so a difference between rows of two machines "
                "measures the machines too.", "", md_table(hosts), ""]
    for ds in sorted(set(df["dataset"].dropna())):
        out += [f"## {ds}", ""]
        t = summary_table(ok, ds, treat)
        out += [md_table(t) if len(t) else "_no successful runs_", ""]
        if PUBLISHED_SOURCE in t:
            out += [f"The `{PUBLISHED_SOURCE}` column is the ANN student's accuracy in that paper's setting "
                    "(ANN teacher -> ANN student of the same name; their budgets), not a spiking student.", ""]
        regsets = set(ok[ok["dataset"] == ds]["regularizers"]) - {NONE, treat}
        if regsets:
            out += [f"### {ds}: all regularizer sets", "", md_table(ablation_table(ok, ds)), ""]
        out += _section(f"### {ds}: seeds needed", seeds_table(ok, ds),
                        f"How many seeds a paired 95% interval of ±{PLANNING_HALF_WIDTH:g} points would need if the "
                        "per-seed with/without differences keep the spread measured so far (smallest n with "
                        "t(0.975, n-1) · sd / √n within it; sd from few seeds: an order of magnitude, not a promise).")
        out += _section(f"### {ds}: seed-to-seed spread", spread_table(ok, ds),
                        "Over the seeds run both ways: the accuracy's sample std without and with each regularizer "
                        "set, and the Pitman-Morgan test of equal variances for paired samples (p; the two runs of "
                        "a seed share their random streams). A small p with a ratio below 1 says the regularizer "
                        "steadies the method across seeds, whatever it does to the mean.")
        out += _section(f"### {ds}: synthesis cost", cost_table(ok, ds),
                        "Seconds per synthesized image and where the synthesize() time went (summed over "
                        "seeds; on a GPU the parts are timed without synchronization, so read them loosely).")
        out += _section(f"### {ds}: gradient shares", gradshare_table(ok, ds),
                        "Each term's gradient norm w.r.t. what synthesis optimizes (pixels, or generator + "
                        "latent), relative to the BN-statistics term's, in the probed synthesize() calls: the "
                        "synthesizer's own terms at the first inner step; a gradient-share regularizer's terms at the "
                        "last of steps 0, 1, 2, 4, 8, ..., the share actually held late in the call (rows made before "
                        "the re-measures were trimmed to those terms record the own terms there too) (mean over "
                        "batches and seeds).")
        out += [f"### {ds}: settings", "", md_table(settings_table(df, ds)), ""]
    f = failed_table(df)
    out += ["## Failed runs", ""]
    out += [md_table(f) if len(f) else "_none_", ""]
    fl = flagged_table(df)
    if len(fl):
        out += ["## Flagged runs", "", "Finished, but `baselines.health.divergence_flags` flagged them (KD loss "
                "not finite or above tau^2 ln K, accuracy at chance, no KD step or no evaluation); their "
                "numbers are in the tables above.", "", md_table(fl), ""]
    if plots:
        out += ["## Plots", ""]
        out += [f"![{name}]({path})" for name, path in plots.items()]
        out += [""]
    notes = list(notes)
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def write_report(out: str | Path, plots: bool = True) -> dict[str, Any]:
    """results.csv (+ .parquet when pyarrow is installed), plots/*.png and leaderboard.md."""
    out = Path(out)
    rows = load_rows(out)
    corrupt = corrupt_rows(out)
    if not rows:
        from baselines.errors import ConfigError

        bad = f", only {len(corrupt)} corrupt row file(s) such as {corrupt[0]}" if corrupt else ""
        raise ConfigError(f"{out} has no rows ({out / 'rows'}/*.json){bad}; run `dfkd bench --out {out}` first "
                          "(it runs the jobs without a readable row).")
    df = frame(rows, treatment_of(out))
    paths: dict[str, Any] = {}
    flat = df.assign(grad_norms=[json.dumps(v, sort_keys=True) if isinstance(v, dict) else None
                                 for v in df["grad_norms"]])
    flat.to_csv(out / "results.csv", index=False)
    paths["csv"] = out / "results.csv"
    try:
        import pyarrow  # noqa: F401

        flat.to_parquet(out / "results.parquet", index=False)
        paths["parquet"] = out / "results.parquet"
    except ImportError:
        pass
    notes: list[str] = []
    plot_paths: dict[str, str] = {}
    if plots:
        from .plots import make_plots

        made, notes = make_plots(df, rows, out)
        plot_paths = {name: str(Path(p).relative_to(out)) for name, p in made.items()}
        paths["plots"] = made
    man = read_manifest(out) or {}
    name = man.get("preset", {}).get("name")
    title = f"Leaderboard: {name}" if name else "Leaderboard"
    mixed, teachers, hosts = mixed_cells(df), mixed_teachers(df), mixed_hosts(df)
    text = leaderboard_markdown(df, title, plot_paths, notes, mixed, teachers, hosts)
    if corrupt:
        text += (f"\n## Corrupt row files\n\n{len(corrupt)} row file(s) could not be read (truncated or not "
                 "JSON) and are not in the tables above; re-running the same `dfkd bench` command recomputes "
                 "their jobs:\n\n" + "".join(f"- `{p.relative_to(out)}`\n" for p in corrupt))
    (out / "leaderboard.md").write_text(text)
    paths["mixed"] = list(mixed["job"]) if len(mixed) else []
    paths["teachers"] = sorted(set(teachers["pair"])) if len(teachers) else []
    paths["hosts"] = sorted(set(hosts["pair"])) if len(hosts) else []
    paths["leaderboard"] = out / "leaderboard.md"
    paths["corrupt"] = corrupt
    return paths
