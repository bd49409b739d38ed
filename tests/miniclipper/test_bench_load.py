"""The goodput sweep's stopping rule: a best goodput is a measurement only past the knee."""

from systems.miniclipper.bench_load import knee_reached


def _curve(pairs):
    return [{"rate": r, "goodput_qps": g} for r, g in pairs]


def test_a_curve_still_serving_everything_it_was_offered_has_no_knee():
    # the shape every capped sweep had: goodput == offered up to the last step
    rising = _curve((150 * 1.25 ** k, 150 * 1.25 ** k) for k in range(12))
    assert not knee_reached(rising)


def test_a_fall_of_15_percent_under_the_best_or_under_half_the_offer_is_the_knee():
    assert knee_reached(_curve([(1000, 1000), (1250, 1240), (1560, 1000)]))
    assert not knee_reached(_curve([(1000, 1000), (1250, 1240), (1560, 1100)]))
    assert knee_reached(_curve([(4000, 1900)]))  # served under half of what was offered
