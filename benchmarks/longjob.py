"""What a long job leaves beside its row while it runs: ``job.log``, TensorBoard events and
``checkpoint.pt`` (see README "Long jobs: logs, TensorBoard, resume").

:class:`JobHooks` is built by :func:`benchmarks.job.run_job` for a job with an out dir and
fed through :func:`baselines.distill.distill`'s ``on_epoch(epoch, record, loop)`` callback,
so ``distill`` knows nothing about files:

- ``OUT/job.log``: the config summary, one line per epoch (KD loss, regularizer terms,
  test / val accuracy, pool size, lr), the firing rate when measured, resume notes, the
  error (with its traceback) if the job fails. Appended to, so a resumed job's log shows
  both attempts.
- ``OUT/tb/`` (``run.tensorboard = true``): per-epoch ``kd/loss``, ``kd/<term>``,
  ``acc/test`` / ``acc/val`` / ``acc/agreement``, ``lr``; per synthesize() batch
  ``synth/<loss>``; at the end ``spiking/<layer>`` firing rates and ``acc/student_final``.
- ``OUT/checkpoint.pt`` every ``run.checkpoint_every`` epochs (0 = never): the loop's
  :meth:`~baselines.distill.DistillLoop.state_dict` plus the config hash, written to a
  temporary file and moved into place with ``os.replace`` (a kill never leaves half a
  checkpoint). A re-run with the same config hash resumes from it; it is deleted when the
  job ends ok unless ``run.keep_checkpoint``.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
LOG = "job.log"
TB_DIR = "tb"


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def config_summary(cfg: dict[str, Any]) -> str:
    """One line: dataset, teacher -> student, synthesizer, regularizers, the schedule."""
    run, d = cfg["run"], cfg["distill"]
    regs = "+".join(run["regularizers"]) or "none"
    return (f"{run['dataset']}: {run['teacher']} -> {run['student']} (T={run['T']}, {run['neuron']}), "
            f"synthesizer {run['synthesizer']}, regularizers {regs}, seed {run['seed']}, "
            f"epochs {d['epochs']} x {d['kd_steps']} KD steps (batch {d['batch_size']}, lr {d['lr']}), "
            f"precision {run.get('precision', 'fp32')}, device {run['device']}")


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch'] + 1}/{epochs}",
             "kd_loss " + ("- (warm-up)" if record.get("kd_loss") is None else _num(record["kd_loss"]))]
    for k, v in sorted((record.get("terms") or {}).items()):
        parts.append(f"{k} {_num(v)}")
    for k in ("test_acc", "val_acc", "agreement"):
        if record.get(k) is not None:
            parts.append(f"{k} {record[k]:.2f}%")
    parts += [f"pool {record.get('pool')}", f"lr {_num(record.get('lr'))}"]
    return "  ".join(parts)


def load_checkpoint(out_dir: str | os.PathLike, config_hash: str) -> tuple[dict[str, Any] | None, str | None]:
    """(state, None) when OUT/checkpoint.pt belongs to this config, else (None, why not)."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        return None, None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file
    except Exception as exc:  # noqa: BLE001 - unreadable: start over
        return None, f"ignoring unreadable {path} ({type(exc).__name__}: {exc})"
    if not isinstance(state, dict) or state.get("config_hash") != config_hash:
        return None, f"ignoring {path}: it belongs to another config ({state.get('config_hash')!r})"
    return state, None


def save_checkpoint(out_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to OUT/checkpoint.pt atomically (temporary file + os.replace)."""
    path = Path(out_dir) / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{CHECKPOINT}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class JobHooks:
    """job.log, TensorBoard and checkpoints of one job (see module docstring)."""

    def __init__(self, cfg: dict[str, Any], out_dir: str | os.PathLike, config_hash: str):
        run = cfg["run"]
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.hash, self.epochs = config_hash, int(cfg["distill"]["epochs"])
        self.every = int(run.get("checkpoint_every", 1))
        self.keep = bool(run.get("keep_checkpoint", False))
        self.tb = None
        if run.get("tensorboard"):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.out / TB_DIR))
        self.n_batches = 0
        self.log(f"job {config_hash}: {config_summary(cfg)}")

    # ------------------------------------------------------------------ log
    def log(self, line: str) -> None:
        with open(self.out / LOG, "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {line}\n")

    def resume(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The loop state of this job's checkpoint (None: start afresh); records
        ``resumed_from_epoch`` and the evaluations so far in ``row``."""
        state, why = load_checkpoint(self.out, self.hash)
        if why:
            self.log(why)
        if state is None:
            return None
        loop = state["loop"]
        self.log(f"resuming after epoch {loop['epoch'] + 1}/{self.epochs} from {self.out / CHECKPOINT}")
        self.n_batches = len(loop["acc"].get("batches", []))
        row["resumed_from_epoch"] = loop["epoch"] + 1
        row["history"] = [{"epoch": r["epoch"], **{k: r.get(k) for k in ("test_acc", "val_acc", "agreement")}}
                          for r in loop["acc"]["history"] if "test_acc" in r]
        return loop

    # ------------------------------------------------------------------ distill's on_epoch
    def on_epoch(self, epoch: int, record: dict[str, Any], loop: Any) -> None:
        self.log(epoch_line(record, self.epochs))
        if self.tb is not None:
            self._tb_epoch(epoch, record, loop.epoch_batches)
        last = epoch == self.epochs - 1
        if self.every > 0 and ((epoch + 1) % self.every == 0 or last):
            save_checkpoint(self.out, {"config_hash": self.hash, "loop": loop.state_dict()})

    def _tb_epoch(self, epoch: int, record: dict[str, Any], batches: list[dict[str, Any]]) -> None:
        w = self.tb
        if record.get("kd_loss") is not None:
            w.add_scalar("kd/loss", record["kd_loss"], epoch)
        for k, v in (record.get("terms") or {}).items():
            w.add_scalar(f"kd/{k}", v, epoch)
        for k, tag in (("test_acc", "acc/test"), ("val_acc", "acc/val"), ("agreement", "acc/agreement")):
            if record.get(k) is not None:
                w.add_scalar(tag, record[k], epoch)
        w.add_scalar("lr", record["lr"], epoch)
        w.add_scalar("pool", record["pool"], epoch)
        for b in batches:
            for k, v in (b.get("losses") or {}).items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    w.add_scalar(f"synth/{k}", v, self.n_batches)
            self.n_batches += 1
        w.flush()

    # ------------------------------------------------------------------ end of the job
    def on_metrics(self, row: dict[str, Any]) -> None:
        rates = (row.get("spiking") or {}).get("firing_rates") or {}
        if row.get("firing_rate") is not None:
            self.log(f"firing rate {row['firing_rate']:.4f} (mean), SOPs/image {_num(row.get('sops_per_image'))}; "
                     + ", ".join(f"{k} {v:.4f}" for k, v in rates.items() if k != "mean"))
        if self.tb is not None:
            for k, v in rates.items():
                self.tb.add_scalar(f"spiking/{k}", v, self.epochs - 1)
            if row.get("student_acc") is not None:
                self.tb.add_scalar("acc/student_final", row["student_acc"], self.epochs - 1)

    def finish(self, row: dict[str, Any]) -> None:
        try:
            self._finish(row)
        except OSError:  # job.log on a full disk: the result itself is saved (or kept elsewhere) already
            self.close()

    def _finish(self, row: dict[str, Any]) -> None:
        status = row.get("status")
        if status == "ok":
            acc = row.get("student_acc")
            self.log(f"finished ok: student_acc {_num(acc)}%, teacher_acc {_num(row.get('teacher_acc'))}%, "
                     f"{_num(row.get('total_seconds'))} s" + (f"; flags: {row['flags']}" if row.get("flags") else ""))
            ckpt = self.out / CHECKPOINT
            if ckpt.exists() and not self.keep:
                ckpt.unlink()
        else:
            self.log(f"{status}: {row.get('error')}")
            if row.get("traceback"):
                self.log("traceback:\n" + row["traceback"].rstrip())
        self.close()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def save_samples(synth: Any, path: str, n: int = 32, nrow: int = 8) -> str | None:
    """Write the last ``n`` images of the synthesizer's pool (the latest synthesized, or the
    real images it served) as a PNG grid, sorted by target class; None if the pool is
    empty. One-channel images are written as a grayscale PNG (half the bytes of the RGB grid
    ``torchvision.utils.save_image`` writes: the grids are committed under results/, and the
    tree travels to a lent GPU within 64 MiB). Uses no random numbers, so it never changes a
    run's results."""
    import os

    from PIL import Image
    from torchvision.utils import make_grid

    pool = getattr(synth, "pool", None)
    if pool is None or len(pool) == 0:
        return None
    x, y = pool.tensors()
    x, y = x[-n:], y[-n:]
    order = torch.argsort(y, stable=True)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    grid = make_grid(x[order].float().div(255.0), nrow=nrow, padding=1)  # [3, H, W]
    if x.shape[1] == 1:
        grid = grid[:1]  # make_grid repeats one channel three times
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to("cpu", torch.uint8).numpy()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)
    return path


__all__ = ["JobHooks", "CHECKPOINT", "LOG", "TB_DIR", "config_summary", "epoch_line", "load_checkpoint",
           "save_checkpoint", "save_samples"]
