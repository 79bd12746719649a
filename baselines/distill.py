"""The knowledge-distillation loop shared by every synthesizer.

Each epoch: ``synth_batches`` calls of ``synthesize()`` (new images join the pool), then
``kd_steps`` KD steps on pool batches served by ``sample()`` (train augmentation). The KD
loss is Hinton et al.'s KL at temperature tau, scaled by tau^2 (tau = 20 in the DFKD
references; no hard labels):

    L_KD = tau^2 * KL(softmax(t / tau) || softmax(s / tau))   (batchmean)

plus the attached regularizers' "distill" terms. SGD with momentum, cosine schedule over
all KD steps (``schedule = "cosine-step"``) or, as the reference harness, stepped once per
KD epoch to ``eta_min`` (``"cosine-epoch"``); evaluation of the student on the real test set
every ``eval_every`` epochs.

Warm-up (``warmup``, default: the synthesizer's own, e.g. Fast-DFKD's 20 epochs): the
first epochs only synthesize; no KD step is taken and the schedule is not stepped (the
reference ``datafree_kd.py``: ``if epoch >= warmup: train(...); scheduler.step()``).

How synthesis sees the student (``synthesis_student_mode``): see
:class:`baselines.synthesizers.base.SynthesisSetup` (default "batch-stats").
"""
from __future__ import annotations

import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import nonneg, positive, require
from .optim import sgd_cosine
from .provenance import preserve_rng
from .synthesizers.base import STUDENT_MODES, synthesis_mode, _grad_norm
from .hooks import StepContext, total_loss
from .models import eval_chunk
from .spec import DataSpec
from .synthesizers.base import Synthesizer


SCHEDULES = ("cosine-step", "cosine-epoch")


@dataclass
class DistillConfig:
    """Config section "distill" (defaults: the DFKD references' CIFAR recipe)."""

    epochs: int = 200
    synth_batches: int = 1  # synthesize() calls per epoch
    kd_steps: int = 400  # KD steps per epoch
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    temperature: float = 20.0
    eval_every: int = 1  # epochs between test-set evaluations (the last epoch always)
    eval_batch_size: int = 500
    heldout_images: int = 0  # synthetic images kept out of KD, for the agreement metric
    warmup: int | None = None  # synthesis-only epochs; None = the synthesizer's (Fast: fast.warmup)
    schedule: str = "cosine-step"  # "cosine-step" (per KD step, to 0) | "cosine-epoch" (reference)
    eta_min: float = 0.0  # final lr of the cosine schedule (reference: 2e-4)
    synthesis_student_mode: str = "batch-stats"  # how synthesis queries the student: | "eval"
    grad_probe_every: int = 1  # synthesize() calls between per-term gradient-norm probes (0 = off)

    def validate(self) -> None:
        positive("distill", epochs=self.epochs, batch_size=self.batch_size,
                 temperature=self.temperature, eval_every=self.eval_every,
                 eval_batch_size=self.eval_batch_size)
        nonneg("distill", synth_batches=self.synth_batches, kd_steps=self.kd_steps, lr=self.lr,
               momentum=self.momentum, weight_decay=self.weight_decay,
               heldout_images=self.heldout_images)
        require(self.synth_batches > 0 or self.epochs == 0,
                "distill.synth_batches must be >= 1: every epoch adds images to the pool")
        nonneg("distill", eta_min=self.eta_min, grad_probe_every=self.grad_probe_every)
        require(self.warmup is None or self.warmup >= 0,
                f"distill.warmup = {self.warmup} must be >= 0 (or unset: the synthesizer's own).")
        require(self.schedule in SCHEDULES,
                f"distill.schedule = {self.schedule!r}: use one of {', '.join(SCHEDULES)}.")
        require(self.synthesis_student_mode in STUDENT_MODES,
                f"distill.synthesis_student_mode = {self.synthesis_student_mode!r}: use one of "
                f"{', '.join(STUDENT_MODES)}.")
        require(self.eta_min <= self.lr, f"distill.eta_min = {self.eta_min} must not exceed lr = {self.lr}.")


@dataclass
class DistillResult:
    student_acc: float
    student_acc_best: float
    val_acc: float | None
    agreement: float | None
    history: list[dict[str, Any]]
    images_synthesized: int
    synthesis_seconds: float
    distill_seconds: float
    synth_timing: dict[str, float]
    synth_losses: dict[str, float]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    synth_batches: list[dict[str, Any]] = field(default_factory=list)  # per synthesize() call
    grad_norms: dict[str, float] = field(default_factory=dict)  # mean over probed batches
    kd_warmup_epochs: int = 0


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """tau^2 * KL(softmax(t/tau) || softmax(s/tau)), batch mean (Hinton et al., 2015)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean") * (t * t)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, spec: DataSpec, batch_size: int = 500,
            device: torch.device | None = None, normalized: bool = False) -> Tensor:
    """Argmax predictions for uint8 ([0, 255]) or float pixel-space images [N, C, H, W]
    (a spiking model runs in chunks of :func:`~baselines.models.eval_chunk` images)."""
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    out = []
    batch_size = eval_chunk(model, batch_size)
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            xb = xb.float().div(255) if xb.dtype == torch.uint8 else xb.float()
            out.append(model(xb if normalized else spec.normalize(xb)).argmax(1).cpu())
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, spec: DataSpec, batch_size: int = 500,
             device: torch.device | None = None) -> float:
    """Top-1 accuracy (%) of ``model`` on uint8 images ``x`` with labels ``y``."""
    if len(y) == 0:
        return float("nan")
    return 100.0 * (predict(model, x, spec, batch_size, device) == y).float().mean().item()


def _diagnostics(synth: Synthesizer, batch_size: int) -> dict[str, Any]:
    """Each regularizer's diagnostics on one pool batch (teacher and student, no grad).

    Only runs with regularizers measure them, so the pool batch is drawn without touching
    the run's random stream (and each regularizer draws from its own): a run with a
    regularizer keeps the same KD batches, augmentation and synthesis noise as its pair
    without one."""
    regs = synth.regularizers
    if not len(regs) or len(synth.pool) == 0:
        return {}
    teacher, student = synth.teacher, synth.student
    with torch.no_grad(), synthesis_mode(teacher, student, synth.setup.student_mode):
        with preserve_rng():
            x, _ = synth.sample(batch_size)
        ctx = StepContext("distill", x, None, teacher.forward_features(x),
                          student.forward_features(x, record_spiking=student.is_spiking),
                          teacher, student, synth.spec, synthesizer=synth.name)
        return regs.diagnostics(ctx)


class DistillLoop:
    """The loop's state at the end of an epoch, as ``on_epoch(epoch, record, loop)`` sees it.

    ``loop.epoch_batches``: this epoch's synthesize() records (losses, gradient norms);
    ``loop.state_dict()``: everything a resumed :func:`distill` needs to continue exactly
    (student, optimizer, scheduler, grad scaler, synthesizer, accumulators incl. history,
    random-stream states, the epoch), to be saved by the caller (``resume=`` loads it).
    """

    def __init__(self, synth: Synthesizer, opt: Any, sched: Any, scaler: Any, acc: dict[str, Any]):
        self.synth, self.opt, self.sched, self.scaler, self.acc = synth, opt, sched, scaler, acc
        self.epoch = -1
        self.epoch_batches: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        import copy

        from .provenance import rng_state

        return {"epoch": self.epoch, "student": self.synth.student.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "synthesizer": self.synth.state_dict(), "rng": rng_state(),
                "acc": copy.deepcopy(dict(self.acc, timing=dict(self.acc["timing"])))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from .provenance import set_rng_state

        self.synth.student.load_state_dict(state["student"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.synth.load_state_dict(state["synthesizer"])
        self.acc.clear()
        self.acc.update(state["acc"])
        self.acc["timing"] = defaultdict(float, self.acc["timing"])
        self.epoch = int(state["epoch"])
        set_rng_state(state["rng"])


def distill(synth: Synthesizer, test: tuple[Tensor, Tensor], cfg: DistillConfig | None = None,
            val: tuple[Tensor, Tensor] | None = None,
            on_eval: Callable[[int, dict[str, Any]], None] | None = None,
            progress: bool = False,
            on_epoch: Callable[[int, dict[str, Any], DistillLoop], None] | None = None,
            resume: dict[str, Any] | None = None, precision: str = "fp32") -> DistillResult:
    """Distill ``synth.teacher`` into ``synth.student`` on ``synth``'s transfer set.

    ``on_epoch(epoch, record, loop)`` runs after each epoch's history record (logs,
    TensorBoard, checkpoints: ``loop.state_dict()``); ``resume`` (a ``loop.state_dict()``)
    continues after its epoch with the same numbers as an uninterrupted run.
    ``precision``: "fp32" | "bf16" | "fp16" (:mod:`baselines.precision`).
    """
    from .precision import autocast, check_precision, grad_scaler, slow_precision_warning

    cfg = cfg or DistillConfig()
    teacher, student, spec, regs = synth.teacher, synth.student, synth.spec, synth.regularizers
    device = synth.device
    check_precision(precision, device)
    if (slow := slow_precision_warning(precision, device)) is not None:
        warnings.warn(slow, stacklevel=2)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.train()
    warmup = synth.kd_warmup_epochs() if cfg.warmup is None else cfg.warmup
    warmup = min(warmup, cfg.epochs)
    kd_epochs = cfg.epochs - warmup
    synth.total_epochs = cfg.epochs
    periods = kd_epochs if cfg.schedule == "cosine-epoch" else kd_epochs * cfg.kd_steps
    opt, sched = sgd_cosine(student.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay, periods, cfg.eta_min)
    scaler = grad_scaler(precision, device)
    # everything that accumulates over epochs (saved in checkpoints)
    acc: dict[str, Any] = {"synth_seconds": 0.0, "n_images": 0, "timing": defaultdict(float),
                           "synth_losses": {}, "batches": [], "history": [], "best": float("-inf"),
                           "last": float("nan"), "val_acc": None, "agreement": None, "diagnostics": {},
                           "kd_seconds": 0.0, "step": 0, "heldout": None}
    loop = DistillLoop(synth, opt, sched, scaler, acc)

    def run_synthesis() -> None:
        with autocast(precision, device, "synthesis"):
            res = synth.synthesize()
        acc["synth_seconds"] += res.seconds
        acc["n_images"] += len(res.images)
        for k, v in res.timing.items():
            acc["timing"][k] += v
        acc["synth_losses"] = res.losses or acc["synth_losses"]
        rec = {"epoch": synth.epoch, "seconds": res.seconds, "losses": dict(res.losses),
               "grad_norms": dict(res.grad_norms)}
        acc["batches"].append(rec)
        loop.epoch_batches.append(rec)

    def evaluate_(model: nn.Module, x: Tensor, y: Tensor) -> float:
        with autocast(precision, device, "eval"):
            return evaluate(model, x, y, spec, cfg.eval_batch_size, device)

    if resume is not None:
        loop.load_state_dict(resume)
    elif cfg.heldout_images > 0:
        while len(synth.pool) < cfg.heldout_images:
            run_synthesis()
        acc["heldout"] = synth.pool.pop_last(cfg.heldout_images)[0]
        acc["n_images"] -= cfg.heldout_images  # not part of the transfer set
    heldout = acc["heldout"]
    need_spiking = regs.needs_spiking("distill") and student.is_spiking
    use_regs = any(r.acts_in("distill") for r in regs)
    kd_shares = regs.grad_shares("distill")
    kd_scales: dict[str, float] = {}
    params = [p for p in student.parameters() if p.requires_grad]
    epochs = range(loop.epoch + 1, cfg.epochs)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        epochs = bar = tqdm(epochs, desc=f"distill[{synth.name}]", unit="epoch", initial=loop.epoch + 1,
                            total=cfg.epochs)
    for epoch in epochs:
        loop.epoch_batches = []
        synth.set_epoch(epoch)
        for _ in range(cfg.synth_batches):
            run_synthesis()
        if epoch == 0 and len(regs):
            acc["diagnostics"]["start"] = _diagnostics(synth, min(cfg.batch_size, 256))
        t0 = time.perf_counter()
        student.train()
        kd_sum = 0.0
        reg_sums: dict[str, float] = defaultdict(float)
        in_warmup = epoch < warmup
        for i in range(0 if in_warmup else cfg.kd_steps):
            x, _ = synth.sample(cfg.batch_size)
            with autocast(precision, device, "kd"):
                with torch.no_grad():
                    t_out = teacher.forward_features(x)
                s_out = student.forward_features(x, record_spiking=need_spiking)
                terms = {"kd": kd_loss(s_out.logits.float(), t_out.logits.float(), cfg.temperature)}
                if use_regs:
                    ctx = StepContext("distill", x, None, t_out, s_out, teacher, student, spec,
                                      step=acc["step"], epoch=epoch, synthesizer=synth.name)
                    terms.update(regs.terms(ctx))
            if use_regs and kd_shares:
                if i == 0:  # gradient-share weights vs the KD term, once per epoch
                    g_kd = _grad_norm(terms["kd"], params)
                    for k in kd_shares:
                        g = _grad_norm(terms[k], params) if k in terms else 0.0
                        kd_scales[k] = kd_shares[k] * g_kd / g if g > 1e-12 * max(g_kd, 1e-30) else 0.0
                terms = {k: (v * kd_scales.get(k, 0.0) if k in kd_shares else v) for k, v in terms.items()}
            loss = total_loss(terms, "distillation", acc["step"])
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            if cfg.schedule == "cosine-step":
                sched.step()
            kd_sum += float(terms["kd"].detach())
            for k, v in terms.items():
                if k != "kd":
                    reg_sums[k] += float(v.detach())
            acc["step"] += 1
        if not in_warmup and cfg.schedule == "cosine-epoch":
            sched.step()
        acc["kd_seconds"] += time.perf_counter() - t0
        n_kd = 0 if in_warmup else cfg.kd_steps
        record: dict[str, Any] = {"epoch": epoch, "kd_loss": kd_sum / n_kd if n_kd else None,
                                  "pool": len(synth.pool), "lr": opt.param_groups[0]["lr"]}
        if reg_sums:
            record["terms"] = {k: v / max(1, n_kd) for k, v in reg_sums.items()}
            reg_sums.clear()
        if (epoch + 1) % cfg.eval_every == 0 or epoch == cfg.epochs - 1:
            acc["last"] = last = evaluate_(student, test[0], test[1])
            acc["best"] = max(acc["best"], last)
            record["test_acc"] = last
            if val is not None:
                acc["val_acc"] = record["val_acc"] = evaluate_(student, val[0], val[1])
            if heldout is not None:
                with autocast(precision, device, "eval"):
                    pt = predict(teacher, heldout, spec, cfg.eval_batch_size, device)
                    ps = predict(student, heldout, spec, cfg.eval_batch_size, device)
                acc["agreement"] = record["agreement"] = 100.0 * (pt == ps).float().mean().item()
            if on_eval is not None:
                on_eval(epoch, {k: record.get(k) for k in ("test_acc", "val_acc", "agreement")})
        acc["history"].append(record)
        loop.epoch = epoch
        if bar is not None:
            post = {} if record["kd_loss"] is None else {"kd_loss": f"{record['kd_loss']:.4g}"}
            if acc["last"] == acc["last"]:
                post["test_acc"] = f"{acc['last']:.2f}%"
            bar.set_postfix(post, refresh=False)
        if on_epoch is not None:
            on_epoch(epoch, record, loop)
    diagnostics = acc["diagnostics"]
    if len(regs):
        diagnostics["end"] = _diagnostics(synth, min(cfg.batch_size, 256))
    probed = [b["grad_norms"] for b in acc["batches"] if b["grad_norms"]]
    grad_norms = {k: sum(p[k] for p in probed if k in p) / sum(1 for p in probed if k in p)
                  for k in sorted({k for p in probed for k in p})}
    best = acc["best"]
    return DistillResult(
        student_acc=acc["last"], student_acc_best=best if best > float("-inf") else float("nan"),
        val_acc=acc["val_acc"], agreement=acc["agreement"], history=acc["history"],
        images_synthesized=acc["n_images"], synthesis_seconds=acc["synth_seconds"],
        distill_seconds=acc["kd_seconds"], synth_timing=dict(acc["timing"]),
        synth_losses=acc["synth_losses"], diagnostics=diagnostics, synth_batches=acc["batches"],
        grad_norms=grad_norms, kd_warmup_epochs=warmup,
    )
