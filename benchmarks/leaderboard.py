"""The leaderboard: DIR/rows/*.json -> results.csv (+ results.parquet), leaderboard.md, plots.

Everything is computed from the rows alone (``dfkd report DIR`` rebuilds it). Accuracy is
the spiking student's top-1 on the real test set at the last evaluation (``student_acc``;
the best-over-evaluations value would select on the test set). Per (pair, synthesizer):

- without / with STARS: mean +- sample std (ddof 1) over seeds, and n;
- difference (with - without) and its 95% confidence interval: a t-interval on the
  per-seed differences d_s = acc_with(s) - acc_without(s) over the seeds both have,
  mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n) (Welch's interval on the two groups when no
  seed pairs up); fewer than 2 values gives no interval ("n<2: no CI");
- teacher accuracy, the ``real`` KD upper reference, synthesis seconds per image, the
  student's firing rate and synaptic operations (SOPs) per image;

plus the ``noise`` and ``scratch`` reference rows, the published ANN->ANN numbers of the
Fast-DFKD paper (Table 1) where dataset, teacher and student (ANN name, ``spiking_``
prefix removed) match, and the failed runs with their errors. t quantiles are computed
here (regularized incomplete beta + bisection), without scipy.
"""
from __future__ import annotations

import json

import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from . import runner

REFERENCE_SYNTHS = ("real", "noise", "scratch")
STARS = "stars"
NONE = "none"

#: Published top-1 (%) of ANN students, Fang et al., "Up to 100x Faster Data-free Knowledge
#: Distillation" (AAAI 2022), Table 1, as collected in shared/reference/baselines.md:
#: (dataset, teacher, ANN student, method as printed, our synthesizer name, accuracy).
PUBLISHED_SOURCE = "published (ANN->ANN, Fast-DFKD Table 1)"
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

#: parts of a synthesize() call timed by the synthesizers (row["synth_timing"], seconds)
TIMING_PARTS = ("teacher_forward", "student_forward", "backward", "regularizers", "grad_probe", "other")
TIMING_COLUMNS = tuple(f"t_{p}" for p in TIMING_PARTS)
NUMERIC = ("T", "seed", "teacher_acc", "student_acc", "student_acc_best", "val_acc", "agreement",
           "firing_rate", "sops_per_image", "images_synthesized", "synthesis_seconds", "distill_seconds",
           "synth_s_per_image", "peak_rss_mb", "job_seconds", "epochs", "kd_steps", "synth_batches",
           "batch_size", "train_subset", "test_subset") + TIMING_COLUMNS
COLUMNS = ("job_id", "label", "dataset", "teacher", "student", "pair", "T", "synthesizer", "regularizers",
           "seed", "status", "error", "teacher_acc", "student_acc", "student_acc_best", "val_acc", "agreement",
           "firing_rate", "sops_per_image", "images_synthesized", "synthesis_seconds", "distill_seconds",
           "synth_s_per_image", "peak_rss_mb", "job_seconds", "device", "epochs", "kd_steps", "synth_batches",
           "batch_size", "train_subset", "test_subset", "git_commit", "config_hash", "grad_norms") + TIMING_COLUMNS


# --------------------------------------------------------------------------- statistics
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0

    def guard(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / guard(1.0 - qab * x / qap)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 / guard(1.0 + aa * d)
        c = guard(1.0 + aa / c)
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 / guard(1.0 + aa * d)
        c = guard(1.0 + aa / c)
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student t CDF: 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t >= 0 (symmetric)."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t with ``df`` (> 0, real) degrees of freedom, by bisection."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def mean_std(values: Iterable[Any]) -> tuple[float, float, int]:
    """(mean, sample std with ddof 1 (nan for n < 2), n) of the finite values."""
    v = _finite(values)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    m = sum(v) / n
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1)) if n > 1 else float("nan")
    return m, s, n


def diff_ci(with_by_seed: dict[Any, float], without_by_seed: dict[Any, float], level: float = 0.95) -> dict[str, Any]:
    """Difference with - without and its CI: paired by seed when >= 2 seeds pair up, else
    Welch (both groups >= 2), else no CI. Returns mean, lo, hi, n, method."""
    a = {k: v for k, v in with_by_seed.items() if _finite([v])}
    b = {k: v for k, v in without_by_seed.items() if _finite([v])}
    q = 0.5 + level / 2.0
    common = sorted(set(a) & set(b), key=str)
    if len(common) >= 2:
        d = [a[s] - b[s] for s in common]
        m, sd, n = mean_std(d)
        half = t_quantile(q, n - 1) * sd / math.sqrt(n)
        return {"mean": m, "lo": m - half, "hi": m + half, "n": n, "method": "paired"}
    ma, sa, na = mean_std(a.values())
    mb, sb, nb = mean_std(b.values())
    if na == 0 or nb == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0, "method": "none"}
    m = ma - mb
    if common and len(common) == 1 and (na < 2 or nb < 2):
        s = common[0]
        return {"mean": a[s] - b[s], "lo": float("nan"), "hi": float("nan"), "n": 1, "method": "n<2"}
    if na < 2 or nb < 2:
        return {"mean": m, "lo": float("nan"), "hi": float("nan"), "n": min(na, nb), "method": "n<2"}
    va, vb = sa * sa / na, sb * sb / nb
    se = math.sqrt(va + vb)
    if se == 0:
        return {"mean": m, "lo": m, "hi": m, "n": min(na, nb), "method": "welch"}
    df = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    half = t_quantile(q, df) * se
    return {"mean": m, "lo": m - half, "hi": m + half, "n": min(na, nb), "method": "welch"}


# --------------------------------------------------------------------------- formatting
def fmt_ms(m: float, s: float, n: int, digits: int = 2) -> str:
    if n == 0 or not math.isfinite(m):
        return "-"
    if n == 1 or not math.isfinite(s):
        return f"{m:.{digits}f} (n={n})"
    return f"{m:.{digits}f} ± {s:.{digits}f} (n={n})"


def fmt_diff(d: dict[str, Any]) -> str:
    if d["n"] == 0 or not math.isfinite(d["mean"]):
        return "-"
    if d["method"] in ("n<2", "none") or not math.isfinite(d["lo"]):
        return f"{d['mean']:+.2f} (n<2: no CI)"
    tag = "paired" if d["method"] == "paired" else "Welch"
    return f"{d['mean']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}] ({tag}, n={d['n']})"


def _num(v: float | None) -> str:
    """Compact number: 2.00e+05, 123, 12.34, 0.123, 1.20e-03; nan -> "-"."""
    if v is None or not math.isfinite(v):
        return "-"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e4 or a < 1e-2:
        return f"{v:.2e}"
    if a >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}" if a >= 1 else f"{v:.3f}"


def _int(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.0f}"


def _pair_num(without: float, with_: float) -> str:
    return f"{_num(without)} / {_num(with_)}"


def md_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = [cell(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for rec in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in rec) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the frame
def load_rows(out: str | Path) -> list[dict[str, Any]]:
    return list(runner.read_rows(out).values())


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def reg_names(regs: Any) -> list[str]:
    """Regularizer names of a row (names, or run_job's [{"name", "params"}] records)."""
    if not regs:
        return []
    if isinstance(regs, str):
        return [regs]
    return [str(x.get("name")) if isinstance(x, dict) else str(x) for x in regs]


def frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One flat record per row (the columns of results.csv)."""
    recs = []
    for r in rows:
        regs = reg_names(r.get("regularizers"))
        cfg = r.get("config") or {}
        rec = {k: r.get(k) for k in COLUMNS}
        rec.update(job_id=r.get("job_id") or r.get("config_hash"), label=r.get("job_label"),
                   pair=f"{r.get('teacher')}:{r.get('student')}", regularizers="+".join(regs) or NONE,
                   epochs=_get(cfg, "distill", "epochs"), kd_steps=_get(cfg, "distill", "kd_steps"),
                   synth_batches=_get(cfg, "distill", "synth_batches"), batch_size=_get(cfg, "distill", "batch_size"),
                   train_subset=_get(cfg, "run", "train_subset"), test_subset=_get(cfg, "run", "test_subset"))
        timing = r.get("synth_timing") if isinstance(r.get("synth_timing"), dict) else {}
        for part in TIMING_PARTS:
            rec[f"t_{part}"] = timing.get(part)
        imgs, secs = _finite([r.get("images_synthesized")]), _finite([r.get("synthesis_seconds")])
        rec["synth_s_per_image"] = secs[0] / imgs[0] if imgs and secs and imgs[0] > 0 else None
        if rec["label"] is None:
            rec["label"] = runner.job_label(str(r.get("dataset")), str(r.get("teacher")), str(r.get("student")),
                                            str(r.get("synthesizer")), regs, r.get("seed"))
        recs.append(rec)
    df = pd.DataFrame(recs, columns=list(COLUMNS))
    for c in NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df.sort_values(["dataset", "pair", "synthesizer", "regularizers", "seed"], kind="stable",
                          na_position="last").reset_index(drop=True)


def published(dataset: str, teacher: str, student: str, synthesizer: str) -> list[tuple[str, float]]:
    """Published (method label, accuracy) for this setting; the student's ANN name is its
    name without a ``spiking_`` prefix."""
    ann = student[len("spiking_"):] if student.startswith("spiking_") else student
    return [(lab, acc) for (ds, t, s, lab, syn, acc) in PUBLISHED
            if ds == dataset and t == teacher and s == ann and syn == synthesizer]


def _by_seed(g: pd.DataFrame) -> dict[Any, float]:
    out = {}
    for seed, acc in zip(g["seed"], g["student_acc"]):
        out.setdefault(seed, acc)
    return out


def _mean(values: Iterable[Any]) -> float:
    return mean_std(values)[0]


def summary_table(ok: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The leaderboard table of one dataset (ok rows only)."""
    d = ok[ok["dataset"] == dataset]
    recs = []
    pub_any = False
    for pair, gp in d.groupby("pair", sort=True):
        teacher, student = pair.split(":", 1)
        t_m, t_s, t_n = mean_std(gp.drop_duplicates("job_id")["teacher_acc"])
        teacher_cell = "-" if t_n == 0 else (f"{t_m:.2f}" if not (t_s > 1e-9) else fmt_ms(t_m, t_s, t_n))
        real = gp[(gp["synthesizer"] == "real") & (gp["regularizers"] == NONE)]
        real_cell = fmt_ms(*mean_std(real["student_acc"]))
        methods = [s for s in dict.fromkeys(gp["synthesizer"]) if s not in REFERENCE_SYNTHS]
        for synth in methods + [r for r in ("noise", "scratch") if r in set(gp["synthesizer"])]:
            g = gp[gp["synthesizer"] == synth]
            wo, w = g[g["regularizers"] == NONE], g[g["regularizers"] == STARS]
            is_ref = synth in REFERENCE_SYNTHS
            pub = published(dataset, teacher, student, synth)
            pub_any = pub_any or bool(pub)
            recs.append({
                "pair": pair,
                "synthesizer": f"{synth} (reference)" if is_ref else synth,
                "without STARS": fmt_ms(*mean_std(wo["student_acc"])),
                "with STARS": "-" if is_ref else fmt_ms(*mean_std(w["student_acc"])),
                "difference (95% CI)": "-" if is_ref else fmt_diff(diff_ci(_by_seed(w), _by_seed(wo))),
                "teacher": teacher_cell,
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


def leaderboard_markdown(df: pd.DataFrame, title: str = "Leaderboard",
                         plots: dict[str, str] | None = None, notes: Iterable[str] = ()) -> str:
    ok = df[df["status"] == "ok"]
    out = [f"# {title}", "",
           "Accuracy: top-1 (%) of the spiking student on the real test set (the test subset where one is "
           "listed under Settings), at the last evaluation. mean ± sample std over seeds (n = seeds). "
           "Difference = with STARS − without, with a 95% t-interval on the per-seed paired differences "
           "(Welch when no seed pairs up; n<2: no CI). Columns `w/o / w/` give the value without / with STARS. "
           "SOPs = synaptic operations.", ""]
    for ds in sorted(set(df["dataset"].dropna())):
        out += [f"## {ds}", ""]
        t = summary_table(ok, ds)
        out += [md_table(t) if len(t) else "_no successful runs_", ""]
        if PUBLISHED_SOURCE in t:
            out += [f"The `{PUBLISHED_SOURCE}` column is the ANN student's accuracy in that paper's setting "
                    "(ANN teacher -> ANN student of the same name; their budgets), not a spiking student.", ""]
        regsets = set(ok[ok["dataset"] == ds]["regularizers"]) - {NONE, STARS}
        if regsets:
            out += [f"### {ds}: all regularizer sets", "", md_table(ablation_table(ok, ds)), ""]
        cost = cost_table(ok, ds)
        if len(cost):
            out += [f"### {ds}: synthesis cost", "",
                    "Seconds per synthesized image and where the synthesize() time went (summed over "
                    "seeds; on a GPU the parts are timed without synchronization, so read them loosely).",
                    "", md_table(cost), ""]
        shares = gradshare_table(ok, ds)
        if len(shares):
            out += [f"### {ds}: gradient shares", "",
                    "Each term's gradient norm w.r.t. what synthesis optimizes (pixels, or generator + "
                    "latent), relative to the BN-statistics term's, at the first inner step of the probed "
                    "synthesize() calls (mean over batches and seeds).", "", md_table(shares), ""]
        out += [f"### {ds}: settings", "", md_table(settings_table(df, ds)), ""]
    f = failed_table(df)
    out += ["## Failed runs", ""]
    out += [md_table(f) if len(f) else "_none_", ""]
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
    if not rows:
        from baselines.errors import ConfigError

        raise ConfigError(f"{out} has no rows ({out / 'rows'}/*.json); run `dfkd bench --out {out}` first.")
    df = frame(rows)
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
    man = runner.read_row(out / "manifest.json") or {}
    name = man.get("preset", {}).get("name")
    title = f"Leaderboard: {name}" if name else "Leaderboard"
    text = leaderboard_markdown(df, title, plot_paths, notes)
    (out / "leaderboard.md").write_text(text)
    paths["leaderboard"] = out / "leaderboard.md"
    return paths
