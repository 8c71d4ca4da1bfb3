"""The float-prefix search, with and without the cheap screen, against a hand-worked schedule."""

from __future__ import annotations

import numpy as np
import pytest

from asymfuse.edge.errors import ConfigError
from asymfuse.export.quantize import cosine_rows, search_float_prefix

RNG = np.random.default_rng(0)
REFERENCE = RNG.standard_normal((12, 16))
NOISE = RNG.standard_normal((12, 16))


def _outputs(eps: float) -> np.ndarray:
    return REFERENCE + eps * NOISE


def _worst(eps: float) -> float:
    return float(cosine_rows(_outputs(eps), REFERENCE).min())


class Recorder:
    """attempt/screen callables over ``eps`` per k (real) and ``sim_eps`` per k (simulated)."""

    def __init__(self, eps: dict[int, float], sim_eps: dict[int, float] | None = None, n_convs: int = 49) -> None:
        self.eps, self.sim_eps, self.n_convs = eps, sim_eps or eps, n_convs
        self.built: list[int] = []
        self.screened: list[int] = []

    def attempt(self, k: int) -> tuple[str, np.ndarray, int]:
        self.built.append(k)
        return f"file-{k}", _outputs(self.eps[k]), self.n_convs

    def screen(self, k: int) -> tuple[np.ndarray, int]:
        self.screened.append(k)
        return _outputs(self.sim_eps[k]), self.n_convs


# eps -> worst cosine on this fixed noise: 0.5 -> 0.759, 0.2 -> 0.946, 0.07 -> ~0.993, 0.05 -> 0.996, 0.03 -> 0.9986
SCHEDULE = {0: 0.5, 4: 0.2, 12: 0.07, 20: 0.05, 28: 0.03}


def test_the_schedule_spans_the_target() -> None:
    worst = {k: _worst(e) for k, e in SCHEDULE.items()}
    assert worst[0] < 0.9 < worst[4] < 0.99 < worst[12] < 0.995 <= worst[20]


def test_without_a_screen_every_step_is_built_until_one_passes() -> None:
    rec = Recorder(SCHEDULE)
    artifact, k, cos, n = search_float_prefix(rec.attempt, REFERENCE)
    assert rec.built == [0, 4, 12, 20] and (artifact, k, n) == ("file-20", 20, 49)
    assert cos == pytest.approx(_worst(SCHEDULE[20]))


def test_the_screen_skips_building_the_hopeless_steps_and_picks_the_same_k() -> None:
    rec = Recorder(SCHEDULE)
    artifact, k, cos, _ = search_float_prefix(rec.attempt, REFERENCE, screen=rec.screen)
    assert rec.screened == [0, 4, 12, 20]
    assert rec.built == [12, 20]  # 12 is within the margin of the target, so it is built and checked for real
    assert (artifact, k) == ("file-20", 20) and cos == pytest.approx(_worst(SCHEDULE[20]))
    rec = Recorder(SCHEDULE)
    search_float_prefix(rec.attempt, REFERENCE, screen=rec.screen, screen_margin=0.0)
    assert rec.built == [20]


def test_a_step_the_screen_passes_but_the_real_file_fails_goes_on_to_the_next() -> None:
    rec = Recorder({**SCHEDULE, 20: 0.1}, sim_eps=SCHEDULE)  # simulated 20 passes, the real file does not
    artifact, k, _, _ = search_float_prefix(rec.attempt, REFERENCE, screen=rec.screen, screen_margin=0.0)
    assert rec.built == [20, 28] and (artifact, k) == ("file-28", 28)


def test_when_every_step_is_screened_out_the_best_simulated_one_is_built() -> None:
    hopeless = {0: 0.5, 4: 0.3, 12: 0.2, 20: 0.35}
    rec = Recorder(hopeless)
    artifact, k, cos, _ = search_float_prefix(rec.attempt, REFERENCE, screen=rec.screen, steps=(0, 4, 12, 20))
    assert rec.built == [12] and (artifact, k) == ("file-12", 12) and cos == pytest.approx(_worst(0.2))
    rec = Recorder(hopeless)
    artifact, k, _, _ = search_float_prefix(rec.attempt, REFERENCE, steps=(0, 4, 12, 20))
    assert rec.built == [0, 4, 12, 20] and k == 12  # the same choice without the screen


def test_steps_stop_before_too_few_quantized_convs_and_need_at_least_one() -> None:
    rec = Recorder({0: 0.5, 4: 0.2, 12: 0.1}, n_convs=6)
    _, k, _, n = search_float_prefix(rec.attempt, REFERENCE, screen=rec.screen)
    assert rec.screened == [0, 4] and k == 4 and n == 6  # 12 >= 6 - 1 convs: not tried
    with pytest.raises(ConfigError, match="at least one step"):
        search_float_prefix(rec.attempt, REFERENCE, steps=())
