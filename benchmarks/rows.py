"""The result row: one job's outcome, as written to ``OUT/rows/<job_id>.json`` and read by
the leaderboard, ``dfkd compare`` and the tuner.

:class:`ResultRow` has one constructor family:

- :meth:`ResultRow.of_job`: the dict a job function returned (``run_job``'s result.json,
  the scratch reference's, a test's fake), checked and completed with the runner's keys;
- :meth:`ResultRow.failed`: a job that raised or whose worker died (identity from its config);
- :meth:`ResultRow.reference`: a reference row computed outside ``run_job`` (``scratch``).

Keys a job adds beyond the declared fields travel in ``extra`` and come back in
:meth:`to_dict`, so a job function (or a plugin's) never loses a measurement.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from baselines.config import config_hash

#: Version of the row format written to DIR/rows; bump when a row's meaning changes.
ROWS_SCHEMA = 1
STATUSES = ("ok", "failed")
IDENTITY = ("dataset", "teacher", "student", "T", "synthesizer", "regularizers", "seed", "config")


@dataclass
class ResultRow:
    """One job's row (see ``benchmarks.job.run_job`` for the meaning of each measurement)."""

    # identity
    dataset: str | None = None
    teacher: str | None = None
    student: str | None = None
    T: int | None = None
    synthesizer: str | None = None
    regularizers: list[Any] = field(default_factory=list)  # names, or run_job's {"name", "params"}
    seed: int | None = None
    # outcome
    status: str = "ok"
    error: str | None = None
    run_id: str | None = None
    teacher_acc: float | None = None
    teacher_digest: str | None = None  # baselines.provenance.weights_digest of the teacher used
    student_acc: float | None = None
    student_acc_best: float | None = None
    val_acc: float | None = None
    agreement: float | None = None
    firing_rate: float | None = None
    sops_per_image: float | None = None
    spiking: dict[str, Any] | None = None
    images_synthesized: int | None = None
    synthesis_seconds: float | None = None
    distill_seconds: float | None = None
    total_seconds: float | None = None
    synth_timing: dict[str, float] | None = None
    synth_losses: dict[str, Any] | None = None
    synth_batches: list[Any] | None = None
    grad_norms: dict[str, float] | None = None
    diagnostics: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mb: float | None = None
    device: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    config_hash: str | None = None
    git_commit: str | None = None
    versions: dict[str, Any] | None = None
    traceback: str | None = None
    # the runner's keys
    job_id: str | None = None
    job_label: str | None = None
    job_kind: str | None = None
    rows_schema: int | None = None
    job_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ResultRow":
        """A row read back (any keys; unknown ones go to ``extra``)."""
        names = _field_names()
        row = cls(**{k: v for k, v in d.items() if k in names and k != "extra"})
        row.extra = {k: v for k, v in d.items() if k not in names}
        if "wall_seconds" in row.extra and row.total_seconds is None:  # rows of the old scratch path
            row.total_seconds = row.extra.pop("wall_seconds")
        return row

    @classmethod
    def failed(cls, cfg: dict[str, Any], error: str, traceback: str | None = None) -> "ResultRow":
        """A job that raised or died: identity from its config, status failed."""
        row = cls(config=cfg, config_hash=config_hash(cfg), status="failed", error=error, traceback=traceback)
        row._fill_identity(cfg)
        return row

    @classmethod
    def reference(cls, cfg: dict[str, Any], **measured: Any) -> "ResultRow":
        """A reference row (e.g. ``scratch``) built outside run_job: identity from ``cfg``."""
        row = cls(config=cfg, config_hash=config_hash(cfg), regularizers=[])
        names = _field_names()
        for k, v in measured.items():
            if k in names:
                setattr(row, k, v)
            else:
                row.extra[k] = v
        row._fill_identity(cfg)
        return row

    @classmethod
    def of_job(cls, returned: dict[str, Any], job: dict[str, Any], seconds: float) -> "ResultRow":
        """The row of a job function's return value, with the runner's keys: identity filled
        from the config where absent, a status other than ok/failed made failed."""
        row = cls.from_dict(returned)
        if row.status == "failed" and not row.error:
            row.error = "job reported status 'failed' without an error message"
        if row.status not in STATUSES:
            row.error = row.error or f"job returned status {row.status!r}"
            row.status = "failed"
        row._fill_identity(job["cfg"])
        row.job_id, row.job_label, row.job_kind = job["job_id"], job["label"], job["kind"]
        row.rows_schema, row.job_seconds = ROWS_SCHEMA, round(seconds, 3)
        return row

    def _fill_identity(self, cfg: dict[str, Any]) -> None:
        run = cfg.get("run", {})
        for key in IDENTITY:
            if getattr(self, key) in (None, []) or key == "config" and not self.config:
                val = cfg if key == "config" else run.get(key)
                if key == "regularizers":
                    val = list(val or [])
                if val is not None:
                    setattr(self, key, val)

    # ------------------------------------------------------------------ reading
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d.update(self.extra)
        return d

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style access (declared fields and ``extra``)."""
        if key in _field_names() and key != "extra":
            return getattr(self, key)
        return self.extra.get(key, default)

    def __getitem__(self, key: str) -> Any:
        if key in _field_names() and key != "extra":
            return getattr(self, key)
        return self.extra[key]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def regularizer_names(self) -> list[str]:
        """Names of the regularizers (names, or run_job's {"name", "params"} records)."""
        return reg_names(self.regularizers)

    @property
    def pair(self) -> str:
        return f"{self.teacher}:{self.student}"

    def summary(self) -> dict[str, Any]:
        """What an executor reports back per job."""
        return {"job_id": self.job_id, "label": self.job_label, "status": self.status, "error": self.error,
                "student_acc": self.student_acc, "seconds": self.job_seconds or 0.0}


def reg_names(regs: Any) -> list[str]:
    """Regularizer names of a row (names, or run_job's [{"name", "params"}] records)."""
    if not regs:
        return []
    if isinstance(regs, str):
        return [regs]
    return [str(x.get("name")) if isinstance(x, dict) else str(x) for x in regs]


def as_row(r: "ResultRow | dict[str, Any]") -> ResultRow:
    return r if isinstance(r, ResultRow) else ResultRow.from_dict(r)


_FIELDS: frozenset[str] | None = None


def _field_names() -> frozenset[str]:
    global _FIELDS
    if _FIELDS is None:
        _FIELDS = frozenset(f.name for f in dataclasses.fields(ResultRow))
    return _FIELDS


def host_of(row: ResultRow | dict[str, Any]) -> str:
    """The machine a row's numbers come from, as far as it decides them: the GPU's name for a
    CUDA row, else the CPU (``versions.cpu``, :func:`baselines.provenance.cpu_identity`); rows
    from before those were recorded say ``platform <versions.platform>``, the nearest thing
    they hold (on the CPU rows of sessions 3-10 that string is one host kind's)."""
    r = as_row(row)
    v = r.versions if isinstance(r.versions, dict) else {}
    on_gpu = str(r.device or "").startswith("cuda")
    named = v.get("gpu") if on_gpu else v.get("cpu")
    return str(named) if named else f"platform {v.get('platform')}"
