"""Teachers: recipe, training that learns, the cache (second call: no training), the
caller's random stream untouched, and user checkpoints (what differs when they do not fit)."""
import argparse
import json
import time

import pytest
import torch

import benchmarks.teachers as teachers
from baselines.errors import CheckpointError, ConfigError, UnknownNameError
from baselines.registry import TEACHERS
from benchmarks.data import load_dataset
from benchmarks.teachers import (cache_root, load_teacher_spec, parse_teacher_spec, recipe_for,
                                 train_teacher)


@pytest.fixture(scope="module")
def toy():
    return load_dataset("toy")


def test_recipe_per_dataset_and_model():
    assert recipe_for("fashion-mnist", "smallcnn").epochs == 3
    assert recipe_for("fashion-mnist", "resnet18").epochs == 15
    assert recipe_for("cifar100", "resnet34").epochs == 200
    assert recipe_for("my-npz", "vgg11").epochs == teachers.FALLBACK_EPOCHS
    r = recipe_for("cifar10", "resnet34", epochs=7)
    assert (r.epochs, r.lr, r.momentum, r.weight_decay, r.batch_size, r.schedule) == (7, 0.1, 0.9, 5e-4, 128, "cosine")
    with pytest.raises(ConfigError, match="positive integer"):
        recipe_for("toy", "smallcnn", epochs=0)


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DFKD_CACHE", str(tmp_path))
    assert cache_root() == tmp_path / "teachers"
    assert cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("DFKD_CACHE")
    assert str(cache_root()).endswith(".cache/stars-dfkd/teachers")


def test_train_then_cache_hit_returns_at_once_without_training(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("DFKD_CACHE", str(tmp_path))
    net, info = train_teacher("toy", "smallcnn", epochs=1, seed=3, progress=False, bundle=toy)
    assert info["cached"] is False
    assert info["test_acc"] > 50.0  # chance is 25%: the recipe learns in one epoch
    ckpt = tmp_path / "teachers" / "toy"
    assert info["checkpoint"].startswith(str(ckpt)) and info["checkpoint"].endswith("-seed3.pt")
    meta = json.loads(open(info["checkpoint"][:-3] + ".json").read())
    assert meta["test_acc"] == info["test_acc"] and meta["recipe"]["epochs"] == 1
    assert meta["versions"]["torch"] and "spikingjelly" in meta["versions"]
    assert meta["train_seconds"] > 0
    assert not net.training and not any(p.requires_grad for p in net.parameters())

    def no_training(*a, **k):
        raise AssertionError("the cached teacher was retrained")

    monkeypatch.setattr(teachers, "fit", no_training)
    t0 = time.perf_counter()
    net2, info2 = train_teacher("toy", "smallcnn", epochs=1, seed=3, progress=False, bundle=toy)
    assert time.perf_counter() - t0 < 2.0
    assert info2["cached"] is True and info2["test_acc"] == info["test_acc"]
    assert info2["checkpoint"] == info["checkpoint"]
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)
    # another seed, another recipe or other training data is another key: it would train
    for kw in ({"seed": 4}, {"epochs": 2}, {"train_subset": 100}):
        with pytest.raises(AssertionError, match="retrained"):
            train_teacher("toy", "smallcnn", **{"epochs": 1, "seed": 3, **kw}, progress=False, bundle=toy)


def test_teacher_training_leaves_the_callers_random_stream_alone(toy, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_teacher("toy", "smallcnn", epochs=1, seed=9, progress=False, bundle=toy.subset(64, 32),
                  cache_dir=tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_same_seed_same_teacher(toy, tmp_path):
    sub = toy.subset(64, 32)
    a, _ = train_teacher("toy", "smallcnn", epochs=1, seed=1, progress=False, bundle=sub, cache_dir=tmp_path / "a")
    b, _ = train_teacher("toy", "smallcnn", epochs=1, seed=1, progress=False, bundle=sub, cache_dir=tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ------------------------------------------------------------------ user checkpoints
def _save(obj, path):
    torch.save(obj, path)
    return str(path)


def test_teacher_spec_parsing():
    assert parse_teacher_spec("resnet34") == ("resnet34", None)
    assert parse_teacher_spec("resnet34@w/x.pt") == ("resnet34", "w/x.pt")
    for bad in ("@x.pt", "resnet34@", ""):
        with pytest.raises(ConfigError):
            parse_teacher_spec(bad)


def test_fitting_checkpoints_load_in_every_common_wrapping(toy, tmp_path):
    spec = toy.spec
    ref = TEACHERS.get("smallcnn")(spec.channels, spec.num_classes, spec.image_size)
    sd = ref.state_dict()
    wrapped = {
        "plain": sd,
        "state_dict": {"state_dict": sd, "epoch": 7, "best_acc": 91.2},
        "model+module": {"model": {f"module.{k}": v for k, v in sd.items()}},
        "no-bn-counters": {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
    }
    for name, obj in wrapped.items():
        net, info = load_teacher_spec(f"smallcnn@{_save(obj, tmp_path / f'{name}.pt')}", spec)
        assert info["user_checkpoint"] is True
        for k, v in ref.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                assert torch.equal(net.state_dict()[k], v), (name, k)


@pytest.mark.parametrize("arch, in_ch, n_cls, present, absent", [
    pytest.param("smallcnn", 1, 10, ["num_classes 10 vs 4",
                 "fc.weight: [10, 128] in the checkpoint vs [4, 128] in the model"],
                 "in_channels", id="wrong-number-of-classes"),
    pytest.param("smallcnn", 3, 4, ["in_channels 3 vs 1",
                 "stem.0.weight: [32, 3, 3, 3] in the checkpoint vs [32, 1, 3, 3] in the model"],
                 "num_classes", id="wrong-input-channels"),
    pytest.param("wrn16_2", 1, 4, ["missing key(s): stem.0.weight", "unexpected key(s)",
                 "looks like a wrn16_2 (in_channels 1, num_classes 4)", "--teacher wrn16_2@"],
                 None, id="other-architecture"),
])
def test_misfit_checkpoint_names_what_differs(toy, tmp_path, arch, in_ch, n_cls, present, absent):
    """A smallcnn@ checkpoint that does not fit the toy spec (1 channel, 4 classes) names
    what differs (and not what fits); another architecture is recognized by its keys."""
    net = TEACHERS.get(arch)(in_channels=in_ch, num_classes=n_cls, image_size=toy.spec.image_size)
    with pytest.raises(CheckpointError) as ei:
        load_teacher_spec(f"smallcnn@{_save(net.state_dict(), tmp_path / 'x.pt')}", toy.spec)
    msg = str(ei.value)
    for text in present:
        assert text in msg
    if absent is not None:
        assert absent not in msg.split("):", 1)[1]  # what fits is not reported as differing


@pytest.mark.parametrize("drop, present", [
    ("stem.0.weight", "1 missing key(s): stem.0.weight"),
    ("fc.weight", "1 missing key(s): fc.weight"),
])
def test_missing_key_is_reported_as_missing_not_as_a_shape(toy, tmp_path, drop, present):
    """A checkpoint without its first convolution is not read as "in_channels 32 vs 1"
    (the next convolution's input width): the missing key is what differs."""
    state = TEACHERS.get("smallcnn")(in_channels=1, num_classes=4, image_size=toy.spec.image_size).state_dict()
    state.pop(drop)
    with pytest.raises(CheckpointError) as ei:
        load_teacher_spec(f"smallcnn@{_save(state, tmp_path / 'x.pt')}", toy.spec)
    msg = str(ei.value).split("):", 1)[1]
    assert present in msg
    assert "in_channels" not in msg and "num_classes" not in msg and "shape mismatch" not in msg


def test_unreadable_or_foreign_checkpoints(toy, tmp_path):
    spec = toy.spec
    with pytest.raises(CheckpointError, match="does not exist"):
        load_teacher_spec(f"smallcnn@{tmp_path / 'nope.pt'}", spec)
    with pytest.raises(CheckpointError, match="not a state_dict"):
        load_teacher_spec(f"smallcnn@{_save({'epoch': 3}, tmp_path / 'meta.pt')}", spec)
    # a pickled object is refused (weights_only), with the fix in the message
    path = _save({"args": argparse.Namespace(lr=0.1)}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="re-save just the state_dict"):
        load_teacher_spec(f"smallcnn@{path}", spec)
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_teacher_spec(f"smallcnn@{tmp_path / 'garbage.pt'}", spec)
    with pytest.raises(UnknownNameError, match="Did you mean 'resnet34'"):
        load_teacher_spec(f"resnet43@{tmp_path / 'garbage.pt'}", spec)
