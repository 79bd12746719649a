"""Statistics of the leaderboard and ``dfkd compare``, and their formatting.

mean +- sample std (ddof 1) over seeds; the difference of two cells with a 95% t-interval
on the per-seed paired differences, mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n) (Welch's
interval on the two groups when no seed pairs up); fewer than 2 values give no interval.
t quantiles come from ``scipy.stats.t``.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import pandas as pd


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t with ``df`` (> 0, real) degrees of freedom."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    from scipy.stats import t

    return float(t.ppf(p, df))


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
        return {"mean": m, "lo": m - half, "hi": m + half, "n": n, "method": "paired", "sd": sd}
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


def seeds_for_half_width(sd: float, half_width: float, level: float = 0.95, max_n: int = 100_000) -> int | None:
    """Planning figure: the smallest n >= 2 with t_{q, n-1} * sd / sqrt(n) <= ``half_width``,
    i.e. the seeds a paired interval needs if the per-seed differences keep the sample std
    ``sd`` measured so far (an estimate from few seeds: read it as an order of magnitude).
    None when it exceeds ``max_n`` or sd is not finite."""
    if not (math.isfinite(sd) and half_width > 0):
        return None
    q = 0.5 + level / 2.0
    if sd == 0:
        return 2

    def fits(n: int) -> bool:
        return t_quantile(q, n - 1) * sd / math.sqrt(n) <= half_width

    lo, hi = 2, 2
    while not fits(hi):  # the half-width falls monotonically with n: double, then bisect
        if hi > max_n:
            return None
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if not fits(mid) else (lo, mid)
    return lo


def pearson(x: Iterable[Any], y: Iterable[Any]) -> float:
    """Pearson's r of the finite pairs (nan for fewer than 3 or no spread)."""
    pts = [(float(a), float(b)) for a, b in zip(x, y) if _finite([a]) and _finite([b])]
    if len(pts) < 3:
        return float("nan")
    mx, my = sum(a for a, _ in pts) / len(pts), sum(b for _, b in pts) / len(pts)
    sxy = sum((a - mx) * (b - my) for a, b in pts)
    sxx, syy = sum((a - mx) ** 2 for a, _ in pts), sum((b - my) ** 2 for _, b in pts)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def pitman_morgan(x: Iterable[Any], y: Iterable[Any]) -> dict[str, Any]:
    """Test of equal variances for *paired* samples (Pitman 1939, Morgan 1939).

    With common random numbers a seed's run with and without a treatment share their random
    streams, so the two groups are not independent and an F test does not apply. For pairs
    (x_i, y_i), var(x) = var(y) exactly when the sums s = x + y and the differences
    d = x - y are uncorrelated (cov(s, d) = var(x) - var(y)); the test is the usual t test of
    their Pearson r: t = r sqrt(n - 2) / sqrt(1 - r^2), n - 2 degrees of freedom, two-sided
    p. Needs n >= 3 finite pairs (non-finite pairs are dropped).

    Returns n, sd_x, sd_y (ddof 1), ratio = sd_y / sd_x, r and p (nan where undefined).
    """
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if _finite([a]) and _finite([b])]
    n = len(pairs)
    nan = float("nan")
    xs, ys = [a for a, _ in pairs], [b for _, b in pairs]
    sd_x, sd_y = mean_std(xs)[1], mean_std(ys)[1]
    r = pearson([a + b for a, b in pairs], [a - b for a, b in pairs])
    out: dict[str, Any] = {"n": n, "sd_x": sd_x, "sd_y": sd_y, "r": r, "p": nan,
                           "ratio": sd_y / sd_x if sd_x > 0 else nan}
    if math.isnan(r):
        return out
    if abs(r) >= 1.0:
        out["p"] = 0.0
        return out
    from scipy.stats import t as t_dist

    t = r * math.sqrt(n - 2) / math.sqrt(1.0 - r * r)
    out["p"] = float(2.0 * t_dist.sf(abs(t), n - 2))
    return out


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


