"""The end of a tuning run: the best trial's test accuracy (measured once), the plots and
``tune_summary.json``."""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from baselines.errors import ConfigError
from baselines.provenance import now_iso

from .png import save_figure
from .store import atomic_write_json
from .trial_retry import counts, log
from .tune_machines import trial_machines
from .tune_space import apply_params, write_best_params
from .tune_storage import mask_url, open_storage


def measure_test_of_best(plan: Any, study: optuna.Study,
                         best: optuna.trial.FrozenTrial) -> float | None:
    """The best trial's test accuracy, measured once (cached in the study's user attrs)."""
    cached = study.user_attrs.get("test_acc_of_best")
    if isinstance(cached, dict) and cached.get("trial") == best.number:
        return cached.get("value")
    cfg = plan.resolve(apply_params(plan.base, plan.space.decode(best.params), plan.home))
    row = plan.run_trial(cfg, None) or {}
    value = row.get("student_acc", row.get("test_acc"))
    atomic_write_json(plan.out / "best_test_row.json", row)
    if row.get("status", "ok") != "ok":
        log(f"the test re-run of trial {best.number} failed: {row.get('error')}")
        value = None
    study.set_user_attr("test_acc_of_best", {"trial": best.number, "value": value})
    return value


def _save_axes(ax: Any, path: Path) -> None:
    import numpy as np
    first = np.asarray(ax).ravel()[0] if not hasattr(ax, "figure") else ax
    fig = first.figure
    save_figure(fig, path, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)


def _importance_evaluator(seed: int) -> Any:
    """fANOVA when scikit-learn is installed (Optuna 5 needs it), else PED-ANOVA (pure numpy)."""
    try:
        import sklearn  # noqa: F401
        return optuna.importance.FanovaImportanceEvaluator(seed=seed)
    except ImportError:
        return optuna.importance.PedAnovaImportanceEvaluator()


def make_plots(plan: Any, study: optuna.Study, n_complete: int) -> tuple[list[str], list[str]]:
    """Optimization history, parameter importances (>= 2 complete trials), slice plot."""
    import matplotlib
    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm
    made, notes = [], []
    jobs: list[tuple[str, Callable[[], Any]]] = [
        ("optimization_history.png", lambda: ovm.plot_optimization_history(study)),
        ("slice.png", lambda: ovm.plot_slice(study))]
    if n_complete >= 2:
        ev = _importance_evaluator(plan.seed)
        jobs.insert(1, ("param_importances.png",
                        lambda: ovm.plot_param_importances(study, evaluator=ev)))
    else:
        notes.append(f"parameter importances skipped: {n_complete} complete trial(s), need >= 2")
    for name, fn in jobs:
        try:
            with warnings.catch_warnings():  # experimental API, degenerate axes of few trials
                warnings.simplefilter("ignore")
                _save_axes(fn(), plan.out / name)
            made.append(name)
        except Exception as exc:  # noqa: BLE001 - a plot never fails the tuning run
            notes.append(f"{name} not drawn: {type(exc).__name__}: {exc}")
    return made, notes


def finalize(plan: Any, study: optuna.Study, t_start: float,
             workers: dict[str, Any]) -> dict[str, Any]:
    """best_params.toml, test_acc_of_best (once), plots and tune_summary.json."""
    trials = study.get_trials(deepcopy=False)
    c = counts(trials)
    notes: list[str] = []
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    test_acc = None
    if best is not None:
        write_best_params(plan.out / "best_params.toml", plan.space.decode(best.params), [
            f"Best {'+'.join(plan.treatment)} parameters from `dfkd tune`: study {plan.study_name!r}, trial "
            f"{best.number}, objective {plan.objective} = {best.value:.6g}.",
            f"Use: dfkd bench --preset {plan.preset_name} --params best_params.toml"], plan.home)
        if plan.spec.final_test:
            test_acc = measure_test_of_best(plan, study, best)
    else:
        notes.append("no complete trial: no best parameters")
    plots: list[str] = []
    if plan.spec.plots and complete:
        plots, pn = make_plots(plan, study, len(complete))
        notes += pn
    machines = sorted(set(trial_machines(study, plan.out).values()))
    if len(machines) > 1:
        notes.append(f"the trials ran on {len(machines)} machines ({'; '.join(machines)}): the same seed "
                     "gives other numbers on another CPU model, and the study compared them as if equal")
    if c["done"] < plan.spec.trials:
        notes.append(f"{c['done']} of {plan.spec.trials} trials finished; re-run the same "
                     "command to resume the study")
    summary = {
        "study": plan.study_name, "storage": mask_url(plan.storage_url),
        "objective": plan.objective, "metric": plan.metric, "direction": "maximize",
        "preset": plan.preset_path, "dataset": plan.dataset,
        "pair": f"{plan.teacher}:{plan.student}", "synthesizer": plan.spec.synthesizer,
        "seed": plan.seed, "trials_requested": plan.spec.trials,
        "trials": {k: c[k] for k in ("complete", "pruned", "fail", "running", "waiting",
                                     "surplus", "job_failed")},
        "best_trial": best.number if best else None,
        "best_value": best.value if best else None,
        "best_params": plan.space.decode(best.params) if best else None,
        "best_params_file": str(plan.out / "best_params.toml") if best else None,
        "test_acc_of_best": test_acc,
        "search_space": plan.space.to_json(), "settings": plan.settings,
        "sampler": f"TPESampler(seed={plan.seed}+worker offset, constant_liar=True, "
                   f"n_startup_trials={plan.settings['n_startup_trials']})",
        "pruner": f"MedianPruner(n_startup_trials={plan.settings['prune_startup_trials']}, "
                  f"n_warmup_steps={plan.settings['prune_warmup_steps']})",
        "base_config": plan.base, "plots": plots, "notes": notes,
        "wall_seconds": round(time.time() - t_start, 3),  # this command, test re-run included
        "trial_seconds_total": round(sum(float(t.user_attrs.get("dfkd_seconds", 0))
                                         for t in trials), 3),
        "workers": workers, "machines": machines,
        "finished": now_iso(),
    }
    atomic_write_json(plan.out / "tune_summary.json", summary)
    return summary


def _shown_path(path: str) -> str:
    """A journal path relative to the working directory when it lies under it (a status table
    committed with the study then names no machine's directories)."""
    p = Path(path)
    return str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p)


def status_table(plan: Any) -> str:
    """``dfkd tune --status``: the study's counts and one markdown row per trial (state,
    objective, parameters, minutes, machine), read from the storage; runs and writes nothing."""
    if not plan.is_rdb and not Path(plan.storage_url).is_file():
        raise ConfigError(f"no study journal at {plan.storage_url}; check --out and --storage")
    storage = open_storage(plan)
    known = optuna.get_all_study_names(storage)
    if plan.study_name not in known:
        raise ConfigError(f"no study {plan.study_name!r} in {mask_url(plan.storage_url)} (it holds "
                          f"{', '.join(map(repr, known)) or 'none'}); check --out, --storage and --study, "
                          "and the preset, synthesizer and objective, which name the default study")
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    c = counts(trials)
    machines = trial_machines(study, plan.out)
    names = [p.name for p in plan.space.params]
    where = mask_url(plan.storage_url) if plan.is_rdb else _shown_path(plan.storage_url)
    lines = [f"study {plan.study_name!r} ({where}): {c['done']} of {plan.spec.trials} "
             f"finished ({c['complete']} complete, {c['pruned']} pruned), {c['fail']} failed, "
             f"{c['running']} running, {c['waiting']} waiting"]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = max(complete, key=lambda t: t.value)
        lines.append(f"best so far: trial {best.number}, {plan.metric} = {best.value:.4f}, "
                     f"{plan.space.decode(best.params)}")
    lines += ["", "| trial | state | " + " | ".join([plan.metric, *names, "minutes", "machine"]) + " |",
              "|---" * (len(names) + 5) + "|"]
    for t in trials:
        params = plan.space.decode(t.params)
        last = max(t.intermediate_values, default=None)  # a pruned / running trial's last report
        value = f"{t.value:.4f}" if t.state == TrialState.COMPLETE else (
            f"({t.intermediate_values[last]:.4f} at epoch {last})" if last is not None else "")
        shown = [f"{v:.4g}" if isinstance(v, float) else str(v)
                 for v in (params.get(n, "") for n in names)]
        seconds = t.user_attrs.get("dfkd_seconds")
        minutes = f"{float(seconds) / 60:.1f}" if seconds is not None else ""
        lines.append(f"| {t.number} | {t.state.name.lower()} | {value} | " + " | ".join(shown)
                     + f" | {minutes} | {machines.get(t.number, '')} |")
    return "\n".join(lines)
