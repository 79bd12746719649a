"""The ``scratch`` reference row: the student trained with cross-entropy on the real labelled
training set, for the same number of optimizer steps as KD (``epochs * kd_steps`` at
``batch_size``; SGD with momentum, cosine schedule, the dataset's crop+flip augmentation),
evaluated on the real test set every ``eval_every`` epochs."""
from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from baselines.optim import sgd_cosine
from baselines.registry import STUDENTS

from .jobs import job_id_of
from .preflight import job_data
from .rows import ResultRow
from .store import atomic_write_json


def run_scratch(cfg: dict[str, Any], out_dir: str | None = None, on_eval=None) -> dict[str, Any]:
    """The job function of ``scratch`` jobs (same signature as ``run_job``). Never raises: a
    failure gives a row with status "failed"."""
    t_start = time.perf_counter()
    try:
        row = _run_scratch(cfg, on_eval, t_start)
    except Exception as exc:  # noqa: BLE001 - any failure becomes a failed row
        row = ResultRow.failed(cfg, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=20))
    d = row.to_dict()
    if out_dir:
        atomic_write_json(Path(out_dir) / "result.json", d)
    return d


def _run_scratch(cfg: dict[str, Any], on_eval, t_start: float) -> ResultRow:
    import torch
    import torch.nn.functional as F

    from baselines.distill import evaluate
    from baselines.errors import NonFiniteLossError
    from baselines.provenance import git_commit, package_versions, peak_rss_mb, pick_device, set_seed
    from baselines.spec import random_crop_flip

    from .job import DATA_SEED

    run, d = cfg["run"], cfg["distill"]
    seed = int(run.get("seed", 0))
    device = pick_device(run.get("device", "cpu"))
    set_seed(seed, device)
    bundle = job_data(run)
    val = None
    if run.get("val_size"):
        bundle, val = bundle.split_validation(int(run["val_size"]), seed=DATA_SEED)
    spec = bundle.spec
    student = STUDENTS.get(run["student"])(spec.channels, spec.num_classes, spec.image_size, T=run.get("T", 4),
                                           neuron=run.get("neuron", "lif"),
                                           surrogate=run.get("surrogate", "atan")).to(device)
    epochs, kd_steps, bs = int(d["epochs"]), int(d["kd_steps"]), int(d["batch_size"])
    opt, sched = sgd_cosine(student.parameters(), d["lr"], d["momentum"], d["weight_decay"], epochs * kd_steps)
    g = torch.Generator().manual_seed(seed)
    history, best, last, val_acc, step = [], float("-inf"), float("nan"), None, 0
    eval_bs = int(d.get("eval_batch_size", 500))
    t0 = time.perf_counter()
    for epoch in range(epochs):
        student.train()
        loss_sum = 0.0
        for _ in range(kd_steps):
            idx = torch.randint(len(bundle.train_y), (bs,), generator=g)
            x = bundle.train_x[idx].float().div(255)
            x = random_crop_flip(x, spec.crop_padding, spec.hflip, generator=g)
            loss = F.cross_entropy(student(spec.normalize(x).to(device)), bundle.train_y[idx].to(device))
            if not torch.isfinite(loss):
                raise NonFiniteLossError("ce", "scratch training", step, float(loss.detach()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach())
            step += 1
        rec: dict[str, Any] = {"epoch": epoch, "ce_loss": loss_sum / max(1, kd_steps)}
        if (epoch + 1) % int(d.get("eval_every", 1)) == 0 or epoch == epochs - 1:
            last = evaluate(student, bundle.test_x, bundle.test_y, spec, eval_bs, device)
            best = max(best, last)
            rec["test_acc"] = last
            if val is not None:
                val_acc = evaluate(student, val[0], val[1], spec, eval_bs, device)
                rec["val_acc"] = val_acc
            if on_eval is not None:
                on_eval(epoch, {"test_acc": last, "val_acc": val_acc, "agreement": None})
        history.append(rec)
    train_s = time.perf_counter() - t0
    spiking, firing_rate, sops = None, None, None
    n = min(int(run.get("metrics_images", 256)), len(bundle.test_y))
    if n > 0:
        from baselines.snn_metrics import measure_spiking

        x = spec.normalize(bundle.test_x[:n].float().div(255).to(device))
        spiking = measure_spiking(student, x, batch_size=eval_bs)
        firing_rate, sops = spiking.get("mean_firing_rate"), spiking.get("sops_per_image")
    return ResultRow.reference(
        cfg, run_id=f"scratch-{job_id_of(cfg)}", teacher_acc=None, student_acc=last,
        student_acc_best=best if best > float("-inf") else float("nan"), val_acc=val_acc, agreement=None,
        firing_rate=firing_rate, sops_per_image=sops, spiking=spiking, images_synthesized=0,
        synthesis_seconds=0.0, distill_seconds=train_s, synth_timing={}, synth_losses={}, diagnostics={},
        history=history, peak_rss_mb=peak_rss_mb(), device=str(device), status="ok", error=None,
        git_commit=git_commit(), versions=package_versions(), total_seconds=time.perf_counter() - t_start)
