"""baselines.health.divergence_flags: a diverged or untrained run is flagged, a healthy one not."""
import math

import pytest

from baselines.health import divergence_flags, kd_loss_bound


def hist(losses, accs):
    out = []
    for e, (l, a) in enumerate(zip(losses, accs)):
        r = {"epoch": e, "kd_loss": l, "pool": 10, "lr": 0.1}
        if a is not None:
            r["test_acc"] = a
        out.append(r)
    return out


def test_healthy_run_has_no_flags():
    assert divergence_flags(hist([5.0, 3.0, 2.0], [40.0, None, 71.5]), 10, kd_loss_bound(10, 4.0)) == []


def test_kd_loss_above_bound_names_the_first_epoch_and_count():
    flags = divergence_flags(hist([5.0, 900.0, 1e4], [30.0, 50.0, 60.0]), 10, 100.0)
    assert flags == ["kd_loss above bound at epoch 1 (900 > 100; 2 of 3 KD epochs, max 1e+04)"]


def test_non_finite_kd_loss_is_flagged():
    flags = divergence_flags(hist([5.0, math.nan, math.inf], [30.0, 50.0, 60.0]), 10, 100.0)
    assert flags == ["kd_loss is nan at epoch 1 (2 of 3 KD epochs not finite)"]


@pytest.mark.parametrize("acc, k, flagged", [(11.9, 10, True), (12.0, 10, True), (12.1, 10, False),
                                             (2.5, 100, True), (3.1, 100, False), (51.0, 2, True)])
def test_accuracy_at_chance_after_training(acc, k, flagged):
    flags = divergence_flags(hist([1.0, 1.0], [50.0, acc]), k, None)
    assert bool(flags) == flagged
    if flagged:
        assert flags[0].startswith(f"test accuracy at chance ({acc:.2f}% <= 100/{k} + 2 = ")


def test_the_last_evaluation_counts_and_nan_accuracy_is_flagged():
    assert divergence_flags(hist([1.0, 1.0], [10.0, 80.0]), 10, None) == []  # recovered
    assert divergence_flags(hist([1.0], [math.nan]), 10, None) == ["test accuracy is not a number at epoch 0 (nan)"]


def test_untrained_and_unevaluated_runs_are_flagged():
    flags = divergence_flags(hist([None, None], [None, 10.0]), 10, 50.0)
    assert flags[0] == "no KD step ran (every epoch was a warm-up): the student is untrained"
    assert flags[1].startswith("test accuracy at chance")
    assert divergence_flags(hist([1.0], [None]), 10, 50.0) == ["no test evaluation in the history"]


def test_default_bound_is_a_uniform_students_worst_loss():
    assert kd_loss_bound(10, 4.0) == pytest.approx(16 * math.log(10))
    assert kd_loss_bound(10, 4.0, factor=2) == pytest.approx(32 * math.log(10))
    with pytest.raises(ValueError):
        kd_loss_bound(1, 4.0)
