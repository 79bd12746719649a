"""One distillation job: resolve a config, run it, write ``result.json``.

Used by ``dfkd distill``, the benchmark runner and the tuner.

:func:`resolve_config` turns a partial nested dict into the full resolved config
``{"run": ..., "distill": ..., "<synthesizer>": ..., "<regularizer>": ...}`` with every
default filled in from the components' ``Config`` dataclasses and validated. It is cheap
(no data, no models): unknown sections, keys and names are reported, with the known ones
and the closest match, before anything is computed.

:func:`run_job` then, in order:

1. *preflight* (errors raise: a config, data, checkpoint or plugin problem is the user's
   to fix, and no compute has been spent): seed, device, load the data (optional subsets,
   validation split carved from train), build the student, the regularizers, and a
   throw-away synthesizer on an untrained copy of the teacher so the synthesizer's and the
   regularizers' build-time checks run; a ``MODEL@CHECKPOINT`` teacher is loaded here, so a
   checkpoint that does not fit raises CheckpointError;
2. *compute* (any exception becomes a ``status: "failed"`` row, except KeyboardInterrupt and
   optuna's TrialPruned, which propagate): get the teacher (train with the recipe, read the
   cache, or load ``MODEL@CHECKPOINT``), evaluate it, build the synthesizer, run
   :func:`baselines.distill.distill`, measure the student's firing rate and synaptic
   operations on a test slice;
3. write ``out_dir/result.json`` atomically (temporary file + ``os.replace``).

Randomness: one seed drives everything; teacher training runs on its own random stream
(:func:`baselines.provenance.preserve_rng`), so a run gives the same numbers whether its
teacher was trained now or came from the cache. Subsets and the validation split are drawn
with a fixed seed (0), so different run seeds see the same data.
"""
from __future__ import annotations

import copy
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from baselines import config as cfgmod
from baselines.errors import ConfigError, UnknownNameError
from baselines.registry import DATASETS, REGULARIZERS, STUDENTS, SYNTHESIZERS

from .longjob import save_samples  # noqa: F401 - re-exported (was defined here)

#: Sections every resolved config has, besides the synthesizer's and the regularizers'.
FIXED_SECTIONS = ("run", "distill")
#: Keys left out of the config hash because they cannot change a result.
UNHASHED_RUN_KEYS = ("progress", "tensorboard", "checkpoint_every", "keep_checkpoint")
#: Keys hashed at a fixed value (they cannot change a result; hashed since before, so ids stay)
PINNED_RUN_KEYS = {"save_student": False}
#: Keys hashed only when they differ from this default (added later: default ids stay)
DEFAULT_DROPPED_RUN_KEYS = {"precision": "fp32"}
#: Seed of the data subsets and the validation split (fixed: run seeds share the data).
DATA_SEED = 0


def teacher_seed(run: dict[str, Any]) -> int:
    """The seed the run's teacher is trained with (run.teacher_seed, else run.seed)."""
    return int(run["seed"] if run.get("teacher_seed") is None else run["teacher_seed"])


@dataclass
class RunConfig:
    """Config section "run": what to distill into what, on which data, where.

    teacher: a registered teacher name (trained with the recipe / read from the cache) or
        ``NAME@CHECKPOINT`` (the user's weights). teacher_epochs: None = the recipe's.
    T / neuron / surrogate: the spiking student's time steps, neuron ("lif", "if",
        "plif") and surrogate gradient (ANN students ignore them).
    neuron_backend: "eager" (SpikingJelly as is), "compiled" (the library's LIF / IF
        recurrence through torch.compile on CPU: identical spikes, several times faster
        after a one-off compile) or "compiled-cl" (the same with channels_last
        convolutions: 1.15-1.2x faster again, spikes not bit-identical; see
        baselines.neuron_backend).
    student_args: extra keyword arguments of the student factory (e.g. ``width`` of the
        small CNN, ``bn_weight``: the initial BatchNorm scale of spiking students).
    train_subset / test_subset: use a deterministic random subset (None = all); the teacher
        is trained on the same training subset. val_size: labelled images carved out of the
        training set for model selection (0 = none); reported as val_acc.
    teacher_seed: the seed the teacher is trained with (None = ``seed``); fix it to vary
        only the synthesis and distillation across seeds, with one shared teacher.
    metrics_images: test images the firing rate and SOPs are measured on.
    save_student: write ``student.pt`` (the state_dict) next to result.json (default on;
        the row records it as student_checkpoint with data_shape, for ``dfkd export``).
    precision: "fp32" | "bf16" | "fp16" autocast (baselines.precision; bf16 is ~10x slower
        than fp32 on CPUs without native bf16). tensorboard: write OUT/tb/ events.
    checkpoint_every: epochs between OUT/checkpoint.pt saves (0 = none); a re-run resumes
        from it and deletes it when done unless keep_checkpoint (benchmarks.longjob).
    """

    dataset: str = "fashion-mnist"
    data_root: str | None = None
    download: bool = False
    teacher: str = "smallcnn"
    teacher_epochs: int | None = None
    teacher_seed: int | None = None
    student: str = "spiking_smallcnn"
    T: int = 4
    neuron: str = "lif"
    surrogate: str = "atan"
    neuron_backend: str = "eager"
    student_args: dict[str, Any] = field(default_factory=dict)
    synthesizer: str = "deepinversion"
    regularizers: list[str] = field(default_factory=list)
    seed: int = 0
    device: str = "auto"
    train_subset: int | None = None
    test_subset: int | None = None
    val_size: int = 0
    metrics_images: int = 256
    save_student: bool = True
    progress: bool = False
    precision: str = "fp32"
    tensorboard: bool = False
    checkpoint_every: int = 1
    keep_checkpoint: bool = False

    def validate(self) -> None:
        cfgmod.require(self.T >= 1, f"run.T = {self.T} must be >= 1 (time steps).")
        cfgmod.require(self.teacher_seed is None or self.teacher_seed >= 0,
                       f"run.teacher_seed = {self.teacher_seed} must be >= 0 (or unset).")
        for key in ("train_subset", "test_subset", "teacher_epochs"):
            val = getattr(self, key)
            cfgmod.require(val is None or val >= 1, f"run.{key} = {val} must be >= 1 (or unset for all).")
        cfgmod.nonneg("run", val_size=self.val_size, metrics_images=self.metrics_images)
        dev = self.device.strip().lower()
        cfgmod.require(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
                       f"run.device = {self.device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
        for name in self.regularizers:
            cfgmod.require(isinstance(name, str) and name != "", f"run.regularizers: bad name {name!r}")
        from baselines.neuron_backend import BACKENDS
        from baselines.precision import check_precision

        check_precision(self.precision)
        cfgmod.nonneg("run", checkpoint_every=self.checkpoint_every)

        cfgmod.require(self.neuron_backend in BACKENDS,
                       f"run.neuron_backend = {self.neuron_backend!r}: use one of {', '.join(BACKENDS)}.")


def _distill_config_cls():
    from baselines.distill import DistillConfig

    return DistillConfig


# ----------------------------------------------------------------------------- resolve
def _section(user: dict[str, Any], name: str) -> dict[str, Any]:
    val = user.get(name) or {}
    if not isinstance(val, dict):
        raise ConfigError(f"config section [{name}] must be a table of key = value, got {val!r}")
    return val


def resolve_config(user: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full resolved config for ``user`` (a partial nested dict; see module docstring).

    Raises (before any compute) UnknownNameError for an unknown section, key, dataset,
    teacher, student, synthesizer or regularizer (listing the known ones and the closest),
    ConfigError for out-of-range values (negative weights, ...), CheckpointError for a
    ``NAME@CHECKPOINT`` whose file is missing, PluginError for a plugin that fails to load.
    Idempotent: resolving a resolved config returns it unchanged.
    """
    from .names import canonical_names
    from .teachers import check_teacher_spec

    if user is not None and not isinstance(user, dict):
        raise ConfigError(f"a config is a table of sections, got {type(user).__name__}")
    user = canonical_names(dict(user or {}))
    run = cfgmod.build(RunConfig, _section(user, "run"), "run")
    DATASETS.entry(run.dataset)
    check_teacher_spec(run.teacher)
    STUDENTS.entry(run.student)
    synth_cls = SYNTHESIZERS.get(run.synthesizer)
    regs = list(run.regularizers)
    dup = sorted({r for r in regs if regs.count(r) > 1})
    if dup:
        raise ConfigError(f"run.regularizers lists {dup} more than once; attach each regularizer once.")
    reg_classes = {r: REGULARIZERS.get(r) for r in regs}
    for name in (run.synthesizer, *regs):
        if name in FIXED_SECTIONS:
            raise ConfigError(f"component name {name!r} collides with the [{name}] section; rename the plugin.")
    if run.synthesizer in reg_classes:
        raise ConfigError(f"{run.synthesizer!r} is both the synthesizer and a regularizer; their config "
                          "sections would collide.")
    known = [*FIXED_SECTIONS, run.synthesizer, *regs]
    for sec in user:
        if sec in known:
            continue
        if sec in SYNTHESIZERS or sec in REGULARIZERS:
            raise ConfigError(
                f"config section [{sec}] configures a component this run does not use "
                f"(synthesizer = {run.synthesizer!r}, regularizers = {regs}); select it "
                f"(--synthesizer / --regularizer) or remove the section."
            )
        raise UnknownNameError("config section", sec, known)
    out: dict[str, Any] = {
        "run": cfgmod.to_dict(run),
        "distill": cfgmod.to_dict(cfgmod.build(_distill_config_cls(), _section(user, "distill"), "distill")),
        run.synthesizer: cfgmod.to_dict(cfgmod.build(synth_cls.Config, _section(user, run.synthesizer),
                                                     run.synthesizer)),
    }
    for name, cls in reg_classes.items():
        out[name] = cfgmod.to_dict(cfgmod.build(cls.Config, _section(user, name), name))
    return out


def default_config() -> dict[str, Any]:
    """The resolved config of an empty user config (every default)."""
    return resolve_config({})


def config_hash(cfg: dict[str, Any]) -> str:
    """Stable 12-hex-digit hash of a resolved config (:func:`baselines.config.config_hash`),
    ignoring keys that cannot change a result (``run.progress``, ...). It is the run_id."""
    c = copy.deepcopy(cfg)
    run = c.get("run", {})
    for key in UNHASHED_RUN_KEYS:
        run.pop(key, None)
    for key, val in PINNED_RUN_KEYS.items():
        if key in run:
            run[key] = val
    for key, val in DEFAULT_DROPPED_RUN_KEYS.items():
        if run.get(key) == val:
            run.pop(key)
    return cfgmod.config_hash(c)


# ----------------------------------------------------------------------------- run
@dataclass
class Prepared:
    """What preflight built (data, student, regularizers) for the compute phase."""

    device: torch.device
    bundle: Any  # DatasetBundle the teacher trains on (after the subset, before the val split)
    train: tuple[torch.Tensor, torch.Tensor]  # transfer-set source for "real" (val removed)
    test: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor] | None
    student: torch.nn.Module
    regularizers: Any  # RegularizerSet
    synth_cls: type
    teacher: tuple[torch.nn.Module, dict[str, Any]] | None = None  # a user checkpoint, loaded in preflight


def prepare(cfg: dict[str, Any]) -> Prepared:
    """Preflight of a resolved config: data, student, regularizers and the build-time checks
    of the synthesizer and the regularizers. Raises DFKDError subclasses; cheap compared
    with the run (no training)."""
    from baselines.hooks import RegularizerSet
    from baselines.provenance import pick_device, preserve_rng, set_seed
    from baselines.synthesizers.base import SynthesisSetup

    from .data import load_dataset
    from .teachers import build_teacher, load_teacher_spec, parse_teacher_spec

    run = cfg["run"]
    device = pick_device(run["device"])
    set_seed(run["seed"], device)
    bundle = load_dataset(run["dataset"], data_root=run["data_root"], download=run["download"])
    if run["train_subset"] is not None or run["test_subset"] is not None:
        bundle = bundle.subset(run["train_subset"], run["test_subset"], seed=DATA_SEED)
    spec = bundle.spec
    val = None
    rest = bundle
    if run["val_size"] > 0:
        if run["val_size"] >= len(bundle.train_y):
            raise ConfigError(f"run.val_size = {run['val_size']} leaves no training images "
                              f"(the training set has {len(bundle.train_y)}).")
        rest, val = bundle.split_validation(run["val_size"], seed=DATA_SEED)
    student = STUDENTS.get(run["student"])(
        in_channels=spec.channels, num_classes=spec.num_classes, image_size=spec.image_size,
        T=run["T"], neuron=run["neuron"], surrogate=run["surrogate"],
        **({"neuron_backend": run["neuron_backend"]} if run["neuron_backend"] != "eager" else {}),
        **run["student_args"])
    regs = RegularizerSet([REGULARIZERS.get(n)(cfg[n], name=n) for n in run["regularizers"]])
    synth_cls = SYNTHESIZERS.get(run["synthesizer"])
    name, ckpt = parse_teacher_spec(run["teacher"])
    with preserve_rng():  # the checks must not shift the run's random stream
        # a user checkpoint that does not fit is a CheckpointError here, before any compute
        user_teacher = load_teacher_spec(run["teacher"], spec, device) if ckpt is not None else None
        probe_teacher = build_teacher(name, spec).eval()
        probe_student = copy.deepcopy(student)
        for r in regs:
            r.check_models(probe_teacher, probe_student)
        probe_regs = RegularizerSet([REGULARIZERS.get(n)(cfg[n], name=n) for n in run["regularizers"]])
        synth_cls(SynthesisSetup(probe_teacher, probe_student, spec, probe_regs, torch.device("cpu"),
                                 real=(rest.train_x, rest.train_y)), cfg[run["synthesizer"]])
        del probe_teacher, probe_student, probe_regs
    return Prepared(device, bundle, (rest.train_x, rest.train_y), (bundle.test_x, bundle.test_y), val,
                    student, regs, synth_cls, user_teacher)


def _is_pruned(exc: BaseException) -> bool:
    t = type(exc)
    return t.__name__ == "TrialPruned" and t.__module__.split(".")[0] == "optuna"


def _nan_to_none(v: Any) -> Any:
    return None if isinstance(v, float) and v != v else v


def run_job(cfg: dict[str, Any], out_dir: str | None = None,
            on_eval: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one distillation job (see module docstring) and return its result row.

    The row (also written to ``out_dir/result.json`` when ``out_dir`` is given) has
    run_id (= config_hash), dataset, teacher, student, T, synthesizer (+ its params),
    regularizers (name + params), seed, teacher_acc, student_acc (last), student_acc_best,
    val_acc, agreement, firing_rate, sops_per_image, spiking (full metrics),
    images_synthesized, synthesis_seconds, distill_seconds, teacher_seconds, synth_timing,
    synth_losses, diagnostics, grad_norms (each term's gradient norm relative to the BN term's,
    w.r.t. the images and the optimized tensors, mean over probed batches), synth_batches
    (per synthesize() call: losses and gradient norms), kd_warmup_epochs, history,
    peak_rss_mb, device, precision, flags (baselines.health.divergence_flags), teacher_import
    (how a MODEL@CHECKPOINT's keys were read), student_checkpoint + data_shape (channels,
    image_size, num_classes: for ``dfkd export``), resumed_from_epoch, status ("ok" / "failed";
    "pruned" is written when a tuner prunes, then the exception propagates), error,
    error_type, traceback, config, config_hash, git_commit, versions, started, finished.
    """
    from baselines.precision import slow_precision_warning
    from baselines.provenance import git_commit, now_iso, package_versions, peak_rss_mb

    from .outputs import write_or_keep

    cfg = resolve_config(cfg)
    run = cfg["run"]
    h = config_hash(cfg)
    t_start = time.perf_counter()
    row: dict[str, Any] = {
        "run_id": h, "status": "running", "error": None, "error_type": None, "traceback": None,
        "dataset": run["dataset"], "teacher": run["teacher"], "student": run["student"],
        "T": run["T"], "neuron": run["neuron"], "synthesizer": run["synthesizer"],
        "synthesizer_params": cfg[run["synthesizer"]],
        "regularizers": [{"name": n, "params": cfg[n]} for n in run["regularizers"]],
        "seed": run["seed"], "teacher_acc": None, "teacher_digest": None, "teacher_cached": None, "teacher_checkpoint": None,
        "teacher_seconds": None, "student_acc": None, "student_acc_best": None, "val_acc": None,
        "agreement": None, "firing_rate": None, "sops_per_image": None, "spiking": None,
        "images_synthesized": None, "synthesis_seconds": None, "distill_seconds": None,
        "total_seconds": None, "synth_timing": None, "synth_losses": None, "diagnostics": None,
        "grad_norms": None, "synth_batches": None, "kd_warmup_epochs": None,
        "history": [], "n_train": None, "n_test": None, "n_val": None, "data_source": None,
        "peak_rss_mb": None, "device": None, "config": cfg, "config_hash": h, "precision": run["precision"],
        "flags": [], "teacher_import": None, "student_checkpoint": None, "data_shape": None,
        "resumed_from_epoch": None,
        "git_commit": git_commit(), "versions": package_versions(), "started": now_iso(),
        "finished": None,
    }
    from .longjob import JobHooks

    prep = prepare(cfg)  # a preflight error raises: nothing computed, nothing written
    hooks = JobHooks(cfg, out_dir, h) if out_dir is not None else None
    if hooks is not None and (slow := slow_precision_warning(run["precision"], prep.device)) is not None:
        hooks.log(f"warning: {slow}")  # distill() warns on stderr; the log keeps it with the job
    spec = prep.bundle.spec
    row.update(device=str(prep.device), n_train=len(prep.train[1]), n_test=len(prep.test[1]),
               n_val=len(prep.val[1]) if prep.val is not None else 0, data_source=prep.bundle.source,
               data_shape={"channels": spec.channels, "image_size": spec.image_size, "num_classes": spec.num_classes})

    def record_eval(epoch: int, metrics: dict[str, Any]) -> None:
        row["history"].append({"epoch": epoch, **metrics})
        if on_eval is not None:
            on_eval(epoch, metrics)

    def finish(status: str) -> dict[str, Any]:
        row.update(status=status, finished=now_iso(), peak_rss_mb=peak_rss_mb(),
                   total_seconds=time.perf_counter() - t_start)
        if out_dir is not None:  # a result that cannot be written is kept elsewhere; the row says where
            kept, err = write_or_keep(f"{out_dir}/result.json", row, h, indent=2)
            if err:
                row.update(result_file=str(kept) if kept else None, save_error=err)
        if hooks is not None:
            hooks.finish(row)
        return row

    try:
        _compute(cfg, prep, row, record_eval, out_dir, hooks)
    except KeyboardInterrupt:
        if hooks is not None:
            hooks.log("interrupted (KeyboardInterrupt); re-run the same command to resume from the checkpoint")
            hooks.close()
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row
        if _is_pruned(exc):
            finish("pruned")
            raise
        row.update(error=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__,
                   traceback=traceback.format_exc())
        return finish("failed")
    return finish("ok")


def _compute(cfg: dict[str, Any], prep: Prepared, row: dict[str, Any],
             on_eval: Callable[[int, dict[str, Any]], None], out_dir: str | None, hooks: Any = None) -> None:
    from baselines.distill import distill, evaluate
    from baselines.health import divergence_flags, kd_loss_bound
    from baselines.provenance import weights_digest
    from baselines.snn_metrics import measure_spiking
    from baselines.synthesizers.base import SynthesisSetup

    from .teachers import get_teacher

    run, dcfg = cfg["run"], cfgmod.build(_distill_config_cls(), cfg["distill"], "distill")
    device, spec = prep.device, prep.bundle.spec
    t0 = time.perf_counter()
    if prep.teacher is not None:
        teacher, tinfo = prep.teacher
    else:
        teacher, tinfo = get_teacher(run["teacher"], run["dataset"], prep.bundle, epochs=run["teacher_epochs"],
                                     seed=teacher_seed(run), device=device, progress=run["progress"])
    row.update(teacher_cached=tinfo.get("cached"), teacher_checkpoint=tinfo.get("checkpoint"),
               teacher_seconds=0.0 if tinfo.get("cached") or tinfo.get("user_checkpoint")
               else tinfo.get("train_seconds", time.perf_counter() - t0), teacher_import=tinfo.get("import"))
    row["teacher_digest"] = weights_digest(teacher)  # which weights, not which file: see provenance
    row["teacher_acc"] = _nan_to_none(evaluate(teacher, *prep.test, spec, dcfg.eval_batch_size, device))
    student = prep.student.to(device)
    prep.regularizers.setup(teacher, student, spec)
    setup = SynthesisSetup(teacher, student, spec, prep.regularizers, device, real=prep.train,
                           student_mode=dcfg.synthesis_student_mode, grad_probe_every=dcfg.grad_probe_every)
    synth = prep.synth_cls(setup, cfg[run["synthesizer"]])
    res = distill(synth, prep.test, dcfg, val=prep.val, on_eval=on_eval, progress=run["progress"],
                  on_epoch=hooks.on_epoch if hooks is not None else None,
                  resume=hooks.resume(row) if hooks is not None else None, precision=run["precision"])
    row.update(student_acc=_nan_to_none(res.student_acc), student_acc_best=_nan_to_none(res.student_acc_best),
               val_acc=res.val_acc, agreement=res.agreement, history=res.history,
               images_synthesized=res.images_synthesized, synthesis_seconds=res.synthesis_seconds,
               distill_seconds=res.distill_seconds, synth_timing=res.synth_timing,
               synth_losses=res.synth_losses, diagnostics=res.diagnostics, grad_norms=res.grad_norms,
               synth_batches=res.synth_batches, kd_warmup_epochs=res.kd_warmup_epochs,
               flags=divergence_flags(res.history, spec.num_classes, kd_loss_bound(spec.num_classes, dcfg.temperature)))
    if out_dir is not None:
        save_samples(synth, f"{out_dir}/samples.png")
    n = min(run["metrics_images"], len(prep.test[1]))
    if n > 0:
        x = spec.normalize(prep.test[0][:n].float().div(255).to(device))
        m = measure_spiking(student, x, batch_size=dcfg.eval_batch_size)
        row.update(spiking=m, firing_rate=m.get("mean_firing_rate"), sops_per_image=m.get("sops_per_image"))
    if hooks is not None:
        hooks.on_metrics(row)
    if run["save_student"] and out_dir is not None:
        import os

        os.makedirs(out_dir, exist_ok=True)
        path = os.path.abspath(f"{out_dir}/student.pt")
        torch.save({k: v.detach().cpu() for k, v in student.state_dict().items()}, path)
        row["student_checkpoint"] = path


__all__ = ["RunConfig", "save_samples", "resolve_config", "default_config", "config_hash", "prepare", "run_job"]
