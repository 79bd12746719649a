"""Registries on entry points: unknown names, duplicates across distributions, runtime
registration, lazy loading of a broken plugin (fails only when used, named with its
distribution)."""
import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from baselines import Synthesizer
from baselines.errors import ConfigError, PluginError, UnknownNameError
from baselines.registry import REGULARIZERS, SYNTHESIZERS, TEACHERS, registry


def make_dist(root: Path, name: str, entry_points: dict[str, dict[str, str]], version: str = "0.1") -> Path:
    """Write a minimal installed distribution (``*.dist-info`` with METADATA and
    entry_points.txt) into ``root``, as pip would into site-packages."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    return info


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A temporary site directory on sys.path (undone after the test)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    importlib.invalidate_caches()


def test_unknown_name_lists_known_names_and_closest():
    with pytest.raises(UnknownNameError) as ei:
        SYNTHESIZERS.get("deepinverson")
    msg = str(ei.value)
    assert "unknown synthesizer 'deepinverson'" in msg
    assert "Did you mean 'deepinversion'?" in msg
    for known in ("real", "noise", "deepinversion", "cmi"):
        assert known in msg
    assert isinstance(ei.value, KeyError)  # also catchable as a KeyError
    with pytest.raises(UnknownNameError, match="Did you mean 'resnet18'"):
        TEACHERS.get("resnet81")
    with pytest.raises(UnknownNameError, match="registry kind"):
        registry("synthesiser")


def test_builtins_come_from_this_distribution_entry_points():
    entries = SYNTHESIZERS.entries()
    assert {"real", "noise"} <= set(entries)
    assert entries["real"].source == "stars-dfkd"
    assert entries["real"].target == "baselines.synthesizers.transfer:RealData"


def test_same_name_from_two_distributions_is_an_error_naming_both(site):
    make_dist(site, "alpha-dfkd", {"stars_dfkd.synthesizers": {"dupe": "alpha_mod:Synth"}})
    make_dist(site, "beta-dfkd", {"stars_dfkd.synthesizers": {"dupe": "beta_mod:Synth"}})
    with pytest.raises(ConfigError) as ei:
        SYNTHESIZERS.names()
    msg = str(ei.value)
    assert "'dupe'" in msg and "alpha-dfkd" in msg and "beta-dfkd" in msg
    assert "alpha_mod:Synth" in msg and "beta_mod:Synth" in msg
    # another kind is unaffected
    assert "smallcnn" in TEACHERS.names()


def test_runtime_registration_by_decorator():
    @SYNTHESIZERS.register("runtime-test-synth")
    class RuntimeSynth(Synthesizer):
        """Registered at runtime by a test."""

    try:
        assert SYNTHESIZERS.get("runtime-test-synth") is RuntimeSynth
        assert SYNTHESIZERS.entry("runtime-test-synth").source == "<runtime>"
        assert "runtime-test-synth" in SYNTHESIZERS.names()
    finally:
        SYNTHESIZERS.unregister("runtime-test-synth")
    assert "runtime-test-synth" not in SYNTHESIZERS


def test_runtime_registration_never_shadows_an_entry_point():
    @SYNTHESIZERS.register("real")
    class Impostor(Synthesizer):
        """Claims a built-in name."""

    try:
        with pytest.raises(ConfigError, match="registered at runtime .* and declared by distribution 'stars-dfkd'"):
            SYNTHESIZERS.get("real")
    finally:
        SYNTHESIZERS.unregister("real")
    assert SYNTHESIZERS.get("real").__name__ == "RealData"


def test_broken_plugin_fails_only_when_used_naming_plugin_and_distribution(site):
    (site / "broken_dfkd_mod.py").write_text(textwrap.dedent("""
        raise RuntimeError("boom: this plugin is broken")
    """))
    make_dist(site, "broken-dfkd", {"stars_dfkd.regularizers": {"broken-reg": "broken_dfkd_mod:Reg"}})
    # listing names reads metadata only: nothing is imported
    assert "broken-reg" in REGULARIZERS.names()
    assert "broken_dfkd_mod" not in sys.modules
    # other entries of the same kind still load
    assert SYNTHESIZERS.get("noise").__name__ == "GaussianNoise"
    with pytest.raises(PluginError) as ei:
        REGULARIZERS.get("broken-reg")
    msg = str(ei.value)
    assert "'broken-reg'" in msg and "'broken-dfkd'" in msg and "broken_dfkd_mod:Reg" in msg
    assert "boom: this plugin is broken" in msg


def test_plugin_with_missing_attribute_is_a_plugin_error(site):
    (site / "half_dfkd_mod.py").write_text("X = 1\n")
    make_dist(site, "half-dfkd", {"stars_dfkd.synthesizers": {"half": "half_dfkd_mod:Missing"}})
    with pytest.raises(PluginError, match="'half-dfkd'"):
        SYNTHESIZERS.get("half")


def test_lookups_ignore_case_and_suggestions_make_sense():
    """Issue 13: "CMI" is "cmi" (not "did you mean 'real'"); an unrelated name gets no
    suggestion; the list of known names is pluralized correctly."""
    from baselines.errors import closest, plural

    assert SYNTHESIZERS.canonical("CMI") == "cmi" and SYNTHESIZERS.get("Cmi") is SYNTHESIZERS.get("cmi")
    assert "DeepInversion" in SYNTHESIZERS and TEACHERS.canonical(" SmallCNN ") == "smallcnn"
    with pytest.raises(UnknownNameError, match=r"unknown synthesizer 'CMIX'\. Did you mean 'cmi'\?"):
        SYNTHESIZERS.get("CMIX")
    with pytest.raises(UnknownNameError) as ei:
        SYNTHESIZERS.get("qqqq")
    assert "Did you mean" not in str(ei.value) and "Known synthesizers: " in str(ei.value)
    assert closest("reel", ["real", "noise"]) == "real" and closest("LR", ["lr", "weight_decay"]) == "lr"
    assert [plural(k) for k in ("key in [distill]", "value for distill.schedule", "TAR granularity", "dataset")] == [
        "keys in [distill]", "values for distill.schedule", "TAR granularities", "datasets"]
