"""Issue 13, table-driven: every bad input to ``dfkd distill`` ends with exit code 2 and a
one-paragraph ``error: ...`` on stderr naming the input, before any compute, never a
traceback and never silent acceptance. Each row is (id, argv, texts the message must hold).

Data rows run without --dry-run (the data is loaded in the job's preflight); the budget is
tiny anyway, so a regression that accepted the input would still finish in seconds.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from baselines.registry import TEACHERS
from benchmarks.cli import main
from benchmarks.data import idx

TINY = ["--teacher-epochs", "1", "--T", "2", "--device", "cpu", "--quiet", "--set", "distill.epochs=1",
        "--set", "distill.kd_steps=2", "--set", "distill.batch_size=8", "--set", "run.metrics_images=8"]


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("DFKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DFKD_DATA_ROOT", str(tmp_path / "default-root"))


def _npz(path: Path, y_train, y_test) -> str:
    r = np.random.default_rng(0)
    np.savez(path, x_train=r.integers(0, 256, (len(y_train), 28, 28), dtype=np.uint8), y_train=np.array(y_train),
             x_test=r.integers(0, 256, (len(y_test), 28, 28), dtype=np.uint8), y_test=np.array(y_test))
    return str(path)


def _folder(root: Path, empty: tuple[str, str]) -> str:
    r = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("ant", "bee", "cat"):
            d = root / split / c
            d.mkdir(parents=True)
            if (split, c) != empty:
                Image.fromarray(r.integers(0, 256, (28, 28), dtype=np.uint8), "L").save(d / "0.png")
    return str(root)


def _test_files_only(d: Path) -> str:
    d.mkdir()
    idx.write_idx(d / "t10k-images-idx3-ubyte.gz", np.zeros((10, 28, 28), np.uint8))
    idx.write_idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(10, dtype=np.uint8))
    return str(d)


def _ckpt_without_stem(path: Path) -> str:
    state = TEACHERS.get("smallcnn")(in_channels=1, num_classes=4, image_size=16).state_dict()
    state.pop("stem.0.weight")
    torch.save(state, path)
    return f"smallcnn@{path}"


def _non_utf8(path: Path) -> str:
    path.write_bytes(b"[distill]\nepochs = 1\n# caf\xe9\n")
    return str(path)


def _config(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# (id, argv(tmp) -> list, dry_run, texts that must appear in the message)
CASES = [
    # -- data: an explicit root never falls back; label sets validated ------------------
    ("data-root-nonexistent", lambda t: ["--dataset", "fashion-mnist", "--data-root", "/nonexistent"], False,
     ["fashion-mnist", "not found in the given data root '/nonexistent'", "/nonexistent/FashionMNIST/raw"]),
    ("data-root-test-files-only", lambda t: ["--dataset", "fashion-mnist", "--data-root", _test_files_only(t / "fm")],
     False, ["not found in the given data root", "missing train-images-idx3-ubyte, train-labels-idx1-ubyte"]),
    ("data-root-in-config-file", lambda t: ["--config", _config(t / "c.toml", '[run]\ndataset = "fashion-mnist-28"\n'
                                                                           'data_root = "/nonexistent"\n')],
     False, ["fashion-mnist", "'/nonexistent'"]),
    ("cifar10-data-root-nonexistent", lambda t: ["--dataset", "cifar10", "--data-root", "/nonexistent"], False,
     ["cifar10", "/nonexistent/cifar-10-batches-py (no such directory)"]),
    ("npz-test-labels-not-in-train", lambda t: ["--dataset", "npz", "--data-root",
                                                _npz(t / "a.npz", [0, 1, 2, 3, 4, 5] * 2, [6, 7, 8, 9])], False,
     ["a.npz", "test label(s) 6..9 do not occur among the training labels 0..5"]),
    ("npz-stray-test-label-57", lambda t: ["--dataset", "npz", "--data-root", _npz(t / "b.npz", [0, 1, 2, 3] * 2,
                                                                                  [0, 1, 57])], False,
     ["b.npz", "test label(s) 57"]),
    ("npz-train-classes-not-contiguous", lambda t: ["--dataset", "npz", "--data-root",
                                                    _npz(t / "c.npz", [0, 1, 3] * 3, [0, 1])], False,
     ["c.npz", "class(es) 2 have no training images"]),
    ("imagefolder-empty-train-class", lambda t: ["--dataset", "imagefolder", "--data-root",
                                                 _folder(t / "f", ("train", "bee"))], False,
     ["train/bee: class folder holds no"]),
    ("imagefolder-empty-test-class", lambda t: ["--dataset", "imagefolder", "--data-root",
                                                _folder(t / "g", ("test", "cat"))], False,
     ["test/cat: class folder holds no"]),
    ("train-subset-too-large", lambda t: ["--dataset", "toy", "--train-subset", "99999999"], False,
     ["run.train_subset = 99999999 (--train-subset) is larger than the training set of 512 images"]),
    ("test-subset-too-large", lambda t: ["--dataset", "toy", "--test-subset", "99999"], False,
     ["run.test_subset = 99999 (--test-subset) is larger than the test set of 256 images"]),
    # -- checkpoints ----------------------------------------------------------------------
    ("checkpoint-missing-stem", lambda t: ["--dataset", "toy", "--teacher", _ckpt_without_stem(t / "x.pt")], False,
     ["x.pt", "1 missing key(s): stem.0.weight"]),
    # -- config files and values ----------------------------------------------------------
    ("config-not-utf8", lambda t: ["--config", _non_utf8(t / "latin1.toml")], True,
     ["latin1.toml", "is not UTF-8 text", "re-save it as UTF-8"]),
    ("config-is-a-directory", lambda t: ["--config", str(t / "confdir")], True, ["confdir' is a directory"]),
    ("config-not-toml", lambda t: ["--config", _config(t / "x.toml", "[distill\n")], True,
     ["x.toml", "is not valid TOML"]),
    ("config-top-level-value", lambda t: ["--config", _config(t / "v.toml", "run = 5\n")], True,
     ["v.toml", "run = 5 is not a section"]),
    ("lr-nan", lambda t: ["--set", "distill.lr=nan"], True, ["distill.lr = nan is not a number"]),
    ("lr-inf", lambda t: ["--set", "distill.lr=inf"], True, ["distill.lr = inf is infinite"]),
    ("temperature-nan", lambda t: ["--set", "distill.temperature=nan"], True,
     ["distill.temperature = nan is not a number"]),
    ("lr-huge", lambda t: ["--set", "distill.lr=1e20"], True, ["distill.lr = 1e+20 is too large", "<= 10"]),
    ("generator-lr-huge", lambda t: ["--synthesizer", "cmi", "--set", "cmi.lr=50"], True,
     ["cmi.lr = 50.0 is too large"]),
    ("kd-steps-zero", lambda t: ["--set", "distill.kd_steps=0"], True,
     ["distill.kd_steps = 0 trains no student", "distill.warmup >= distill.epochs"]),
    ("unknown-key-plural", lambda t: ["--set", "distill.epoch=3"], True,
     ["unknown key in [distill] 'epoch'. Did you mean 'epochs'? Known keys in [distill]: "]),
    ("unknown-synthesizer-case", lambda t: ["--synthesizer", "CMIX"], True,
     ["unknown synthesizer 'CMIX'. Did you mean 'cmi'?", "Known synthesizers:"]),
    ("unknown-name-no-silly-suggestion", lambda t: ["--synthesizer", "qqqq"], True,
     ["unknown synthesizer 'qqqq'. Known synthesizers:"]),
    ("set-empty-key", lambda t: ["--set", "distill.=3"], True, ["--set 'distill.=3': expected section.key=value"]),
    ("set-into-a-value", lambda t: ["--set", "distill.lr=0.1", "--set", "distill.lr.x=3"], True,
     ["'distill.lr' is a value, not a section"]),
    ("set-table-into-a-number", lambda t: ["--set", "distill.lr.x=3"], True,
     ["distill.lr: expected a number, got {'x': 3}"]),
    ("set-datetime", lambda t: ["--set", "run.student_args={when=1979-05-27}"], True,
     ["run.student_args.when", "not supported"]),
]


@pytest.mark.parametrize("argv, dry, texts", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_is_a_clear_error(tmp_path, capsys, argv, dry, texts):
    (tmp_path / "confdir").mkdir()
    args = ["distill", "--synthesizer", "noise", "--out", str(tmp_path / "out"), *TINY, *argv(tmp_path)]
    rc = main(args + (["--dry-run"] if dry else []))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error:"), err
    assert "Traceback" not in err
    for text in texts:
        assert text in err, (text, err)
    assert not (tmp_path / "out" / "result.json").exists()  # nothing ran


@pytest.mark.parametrize("argv, expect", [
    (["--synthesizer", "CMI"], {"synthesizer": "cmi"}),
    (["--synthesizer", "Real", "--dataset", "TOY", "--student", "Spiking_SmallCNN"],
     {"synthesizer": "real", "dataset": "toy", "student": "spiking_smallcnn"}),
    (["--synthesizer", "DeepInversion", "--set", "DEEPINVERSION.iterations=3", "--set", "distill.LR=0.05"],
     {"synthesizer": "deepinversion"}),
])
def test_names_and_keys_match_ignoring_case(tmp_path, capsys, argv, expect):
    rc = main(["distill", "--out", str(tmp_path / "o"), "--dry-run", *argv])
    out = capsys.readouterr()
    assert rc == 0, out.err
    cfg = json.loads(out.out.rsplit("run_id:", 1)[0])
    for k, v in expect.items():
        assert cfg["run"][k] == v
    assert set(cfg) == {"run", "distill", cfg["run"]["synthesizer"]}
    if "DEEPINVERSION.iterations=3" in argv:
        assert cfg["deepinversion"]["iterations"] == 3 and cfg["distill"]["lr"] == 0.05


def test_the_console_script_prints_no_traceback(tmp_path):
    """The real entry point, in a subprocess: exit 2, 'error: ...' on stderr."""
    cfg = _non_utf8(tmp_path / "latin1.toml")
    p = subprocess.run([sys.executable, "-m", "benchmarks.cli", "distill", "--synthesizer", "noise",
                        "--config", cfg, "--out", str(tmp_path / "o"), "--dry-run"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: config file") and "Traceback" not in p.stderr


# -- dfkd bench: preset and executor inputs (the fake jobs of tests/test_runner.py, in-process) -----
def _preset_with(tmp: Path, edit) -> str:
    from test_runner import TINY as PRESET, write_preset

    return write_preset(tmp, edit(PRESET), name="bad.toml")


BENCH_CASES = [
    ("executor-set-misspelled", lambda p: p, ["--set", "executor.local.wrkers=2"],
     ["--set executor.local: unknown option of the local executor 'wrkers'. Did you mean 'workers'?",
      "Known options of the local executor: workers."]),
    ("executor-preset-misspelled", lambda p: p + '\n[executor.submitit]\nslurm_partishun = "gpu"\n', [],
     ["[executor.submitit]: unknown option of the submitit executor 'slurm_partishun'. "
      "Did you mean 'slurm_partition'?"]),
    ("executor-workers-not-a-number", lambda p: p + '\n[executor.local]\nworkers = "two"\n', [],
     ["workers = 'two' must be a whole number >= 1"]),
    ("preset-lr-date", lambda p: p.replace("[distill]\nepochs = 1", "[distill]\nepochs = 1\nlr = 1979-05-27"), [],
     ["distill.lr = 1979-05-27 is a TOML date", "write a number or a quoted string"]),
    ("preset-cost-date", lambda p: p.replace("kd_step_s = 2.0", "kd_step_s = 1979-05-27"), [],
     ["cost.kd_step_s = 1979-05-27 is a TOML date"]),
    ("preset-param-datetime", lambda p: p.replace("alpha = 0.4", "alpha = 1979-05-27T07:32:00"), [],
     ["params.stars.alpha = 1979-05-27T07:32:00 is a TOML datetime"]),
    ("preset-run-not-a-table", lambda p: "run = 3\n" + p, [], ["preset [run] must be a table, got 3"]),
]


@pytest.mark.parametrize("edit, sets, texts", [pytest.param(*c[1:], id=c[0]) for c in BENCH_CASES])
def test_bad_bench_input_is_a_clear_error(tmp_path, capsys, monkeypatch, edit, sets, texts):
    from test_runner import DEBUG, bench_main

    monkeypatch.setenv("FAKE_COUNTER", str(tmp_path / "counter.txt"))
    rc = bench_main(["--preset", _preset_with(tmp_path, edit), "--out", str(tmp_path / "out"),
                     "--executor", "submitit", "--set", DEBUG[0], *sets])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "Traceback" not in err, err
    for text in texts:
        assert text in err, (text, err)
    assert not (tmp_path / "counter.txt").exists()  # no job ran


# -- dfkd tune: --timeout and the storage URL's password (the fake job of tests/test_tune.py) -----
def _tune(tmp_path: Path, *extra: str) -> list[str]:
    from test_tune import write_preset

    return ["tune", "--preset", write_preset(tmp_path), "--synthesizer", "deepinversion", "--trials", "2",
            "--out", str(tmp_path / "tune"), "--no-plots", "--no-test", "--job-fn", "test_tune:job_entry",
            "--resolver", "test_tune:fake_resolve", *extra]


@pytest.mark.parametrize("timeout", ["-5", "0", "nan", "inf"])
def test_tune_timeout_must_be_positive_before_any_trial(tmp_path, capsys, timeout):
    from test_tune import CALLS

    CALLS.clear()
    rc = main(_tune(tmp_path, "--timeout", timeout))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: --timeout {float(timeout)}: give a positive, finite number"), err
    assert CALLS == [] and not (tmp_path / "tune" / "study.journal").exists()


def test_tune_unparsable_storage_url_never_shows_the_password(tmp_path, capsys):
    rc = main(_tune(tmp_path, "--storage", "postgresql://user:s3cret@host:notaport/db"))
    cap = capsys.readouterr()
    assert rc == 2 and cap.err.startswith("error: cannot open the Optuna storage 'postgresql://user:***@host:notaport/db'")
    assert "s3cret" not in cap.err + cap.out
