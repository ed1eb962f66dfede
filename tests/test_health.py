"""Run health flags: NaN and spikes, over-fitting, stalls, memory over plan; each one fires when it should
and stays quiet when it should not, with the boundaries pinned."""

from __future__ import annotations

import json
import math

import pytest

from runner.watch.health import (
    OVER_PLAN,
    SPIKE,
    STALL_MIN_S,
    Flag,
    assess,
    loss_flags,
    memory_flags,
    overfit_flags,
    stall_flags,
)
from tui.demo import RECORDING

T0 = 1_700_000_000.0


def train(losses: list[float], *, every: int = 10, step_s: float = 2.0, first_step: int | None = None) -> list[dict]:
    """Train records, one per logging step (`every` steps apart, `step_s` seconds per step)."""
    first = every if first_step is None else first_step
    return [
        {"step": first + i * every, "loss": loss, "eval_loss": None, "time": T0 + i * every * step_s}
        for i, loss in enumerate(losses)
    ]


def descending(n: int, noise: float = 0.04) -> list[float]:
    """A noisy but healthy loss curve (deterministic)."""
    return [1.0 + 1.2 * math.exp(-i / 25) + noise * math.sin(i * 2.3) for i in range(n)]


def with_evals(train_losses: list[float], eval_losses: list[float]) -> list[dict]:
    """Train records with eval records spread over them (each eval shares its step with a train record)."""
    records = train(train_losses)
    out: list[dict] = []
    gap = len(records) // len(eval_losses)
    evals = iter(eval_losses)
    for i, record in enumerate(records, 1):
        out.append(record)
        if i % gap == 0:
            value = next(evals, None)
            if value is not None:
                out.append({"step": record["step"], "loss": None, "eval_loss": value, "time": record["time"] + 0.5})
    return out


def kinds(flags: list[Flag]) -> list[str]:
    return [f.kind for f in flags]


def recording() -> list[dict]:
    return [json.loads(line) for line in (RECORDING / "metrics.jsonl").read_text().splitlines() if line]


# --- loss: NaN and spikes -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_last_loss_is_an_error(bad):
    records = train(descending(30) + [bad])
    flags = loss_flags(records)
    assert kinds(flags) == ["nan"]
    assert flags[0].level == "error"
    assert f"step {records[-1]['step']}" in flags[0].text


def test_nan_is_flagged_even_with_no_history():
    assert kinds(loss_flags(train([float("nan")]))) == ["nan"]


def test_nan_read_back_from_json_is_flagged():
    # metrics.jsonl is written with json.dumps, which writes NaN; json.loads reads it back as a float.
    records = [json.loads(json.dumps(r)) for r in train([2.0] * 6 + [float("nan")])]
    assert kinds(loss_flags(records)) == ["nan"]


def test_an_earlier_nan_does_not_flag_once_the_loss_is_finite_again():
    assert loss_flags(train([2.0] * 6 + [float("nan")] + [1.9] * 3)) == []


def test_no_losses_no_flags():
    assert loss_flags([]) == []
    assert loss_flags([{"step": 100, "loss": None, "eval_loss": 1.2, "time": T0}]) == []


def test_spike_over_the_recent_median_is_a_warning():
    flags = loss_flags(train([2.0] * 20 + [3.5]))
    assert kinds(flags) == ["spike"]
    assert flags[0].level == "warning"
    assert "3.500" in flags[0].text and "2.000" in flags[0].text


def test_spike_threshold_is_strict():
    # 1.5 x median 2.0 = 3.0 exactly: not a spike; just above it is.
    assert SPIKE == 1.5
    assert loss_flags(train([2.0] * 10 + [3.0])) == []
    assert kinds(loss_flags(train([2.0] * 10 + [3.001]))) == ["spike"]


def test_spike_needs_five_previous_points():
    assert loss_flags(train([2.0] * 4 + [10.0])) == []
    assert kinds(loss_flags(train([2.0] * 5 + [10.0]))) == ["spike"]


def test_spike_needs_five_previous_finite_points():
    # NaNs earlier in the window are skipped: four finite losses are not enough history.
    assert loss_flags(train([float("nan")] * 10 + [2.0] * 4 + [10.0])) == []
    assert kinds(loss_flags(train([float("nan")] * 10 + [2.0] * 5 + [10.0]))) == ["spike"]


def test_spike_median_is_over_the_last_twenty_losses_only():
    # 21 old losses at 10.0 would make the median of the whole history 10.0; the last 20 are 1.0.
    losses = [10.0] * 21 + [1.0] * 20 + [2.0]
    assert kinds(loss_flags(train(losses))) == ["spike"]
    # Converse: an old plateau of 1.0 that has scrolled out of the window no longer counts (the median of
    # the whole history would be 1.0, and 12.0 a spike).
    assert loss_flags(train([1.0] * 30 + [10.0] * 20 + [12.0])) == []


def test_eval_records_are_not_losses():
    # Eval records carry loss None; they neither count as history nor as the last loss.
    records = train([2.0] * 5 + [10.0])
    records.append({"step": records[-1]["step"], "loss": None, "eval_loss": 5.0, "time": records[-1]["time"] + 1})
    assert kinds(loss_flags(records)) == ["spike"]
    records = train([2.0] * 4) + [{"step": 40, "loss": None, "eval_loss": 2.0, "time": T0 + 61}]
    records += train([10.0], first_step=50)
    assert loss_flags(records) == []


def test_noisy_descending_series_has_no_flag_at_any_point():
    losses = descending(200, noise=0.08)
    for n in range(1, len(losses) + 1):
        assert loss_flags(train(losses[:n])) == [], n


# --- over-fitting ---------------------------------------------------------------------------------------


def test_eval_rising_three_times_while_train_falls_is_overfitting():
    records = with_evals(descending(40), [1.30, 1.20, 1.25, 1.31, 1.40])
    flags = overfit_flags(records)
    assert kinds(flags) == ["overfit"]
    assert flags[0].level == "warning"
    assert "1.250" in flags[0].text and "1.400" in flags[0].text


def test_eval_rising_while_train_also_rises_is_not_overfitting():
    rising_train = list(reversed(descending(40)))
    assert overfit_flags(with_evals(rising_train, [1.20, 1.25, 1.31, 1.40])) == []


def test_flat_train_is_not_falling():
    assert overfit_flags(with_evals([1.5] * 40, [1.20, 1.25, 1.31, 1.40])) == []


def test_eval_must_rise_strictly_on_each_of_the_last_three():
    falling = descending(40)
    assert overfit_flags(with_evals(falling, [1.20, 1.31, 1.25])) == []  # up then down
    assert overfit_flags(with_evals(falling, [1.20, 1.20, 1.25])) == []  # flat then up
    assert overfit_flags(with_evals(falling, [1.40, 1.20, 1.25])) == []  # down then up
    assert kinds(overfit_flags(with_evals(falling, [1.10, 1.20, 1.25]))) == ["overfit"]


def test_fewer_than_three_evals_is_not_enough():
    assert overfit_flags(with_evals(descending(40), [1.20, 1.40])) == []
    assert kinds(overfit_flags(with_evals(descending(40), [1.10, 1.20, 1.40]))) == ["overfit"]


def test_non_finite_evals_are_skipped():
    records = with_evals(descending(40), [1.10, 1.20, float("nan"), 1.40])
    assert kinds(overfit_flags(records)) == ["overfit"]


def test_fewer_than_ten_train_losses_is_not_enough():
    assert overfit_flags(with_evals(descending(9), [1.10, 1.20, 1.40])) == []
    assert kinds(overfit_flags(with_evals(descending(10), [1.10, 1.20, 1.40]))) == ["overfit"]


def test_the_recording_never_looks_like_overfitting():
    records = recording()
    assert sum(1 for r in records if r.get("eval_loss") is not None) >= 3
    for n in range(1, len(records) + 1):
        assert overfit_flags(records[:n]) == [], n


# --- stalls ---------------------------------------------------------------------------------------------


def stalled(step_s: float = 2.0, n: int = 20) -> list[dict]:
    return train(descending(n), every=10, step_s=step_s)


def test_stall_with_idle_gpus_is_an_error():
    records = stalled()
    flags = stall_flags(records, now=records[-1]["time"] + 3600, running=True, gpu_util=0.0)
    assert kinds(flags) == ["stall"]
    assert flags[0].level == "error"
    assert "60 min" in flags[0].text and "idle" in flags[0].text


@pytest.mark.parametrize("util", [10.0, 55.0, 100.0, None])
def test_stall_with_busy_or_unknown_gpus_is_a_warning(util):
    records = stalled()
    flags = stall_flags(records, now=records[-1]["time"] + 3600, running=True, gpu_util=util)
    assert kinds(flags) == ["stall"]
    assert flags[0].level == "warning"


def test_gpu_util_just_under_ten_is_idle():
    records = stalled()
    flags = stall_flags(records, now=records[-1]["time"] + 3600, running=True, gpu_util=9.9)
    assert [f.level for f in flags] == ["error"]


def test_a_run_that_is_not_running_never_stalls():
    records = stalled()
    assert stall_flags(records, now=records[-1]["time"] + 86400, running=False, gpu_util=0.0) == []


def test_stall_threshold_is_the_minimum_for_fast_steps():
    records = stalled(step_s=2.0)  # 10 typical steps = 20 s, below the 120 s floor
    last = records[-1]["time"]
    assert STALL_MIN_S == 120.0
    assert stall_flags(records, now=last + 119.9, running=True, gpu_util=0.0) == []
    assert kinds(stall_flags(records, now=last + 120.0, running=True, gpu_util=0.0)) == ["stall"]
    assert kinds(stall_flags(records, now=last + 121.0, running=True, gpu_util=0.0)) == ["stall"]


def test_slow_steps_raise_the_stall_threshold():
    records = stalled(step_s=30.0)  # median 30 s/step: ten steps = 300 s
    last = records[-1]["time"]
    assert stall_flags(records, now=last + 121.0, running=True, gpu_util=0.0) == []
    assert stall_flags(records, now=last + 299.0, running=True, gpu_util=0.0) == []
    assert kinds(stall_flags(records, now=last + 301.0, running=True, gpu_util=0.0)) == ["stall"]


def test_stall_typical_step_is_a_median_not_thrown_off_by_one_slow_step():
    # One 50-minute gap (a slow checkpoint save) among 2 s steps keeps the threshold at 120 s; a mean
    # step time would have put it near 180 s.
    records = stalled(step_s=2.0)
    for r in records[10:]:
        r["time"] += 3000.0
    last = records[-1]["time"]
    assert kinds(stall_flags(records, now=last + 130.0, running=True, gpu_util=0.0)) == ["stall"]


def test_eval_records_do_not_break_stall_detection():
    records = with_evals(descending(40), [1.5, 1.4, 1.3, 1.2])
    last = records[-1]["time"]
    assert stall_flags(records, now=last + 100.0, running=True, gpu_util=0.0) == []
    assert kinds(stall_flags(records, now=last + 200.0, running=True, gpu_util=0.0)) == ["stall"]


def test_no_records_or_no_times_no_stall():
    assert stall_flags([], now=T0 + 10_000, running=True, gpu_util=0.0) == []
    untimed = [{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.9}]
    assert stall_flags(untimed, now=T0 + 10_000, running=True, gpu_util=0.0) == []


def test_a_single_record_uses_the_minimum_threshold():
    records = train([2.0])
    assert stall_flags(records, now=records[0]["time"] + 100, running=True, gpu_util=0.0) == []
    assert kinds(stall_flags(records, now=records[0]["time"] + 200, running=True, gpu_util=0.0)) == ["stall"]


# --- memory over plan -----------------------------------------------------------------------------------


def mem_record(reserved: dict[int, float], step: int = 100) -> dict:
    return {
        "step": step,
        "loss": 1.5,
        "time": T0 + step,
        "mem": {str(r): {"allocated_gib": gib - 2, "reserved_gib": gib} for r, gib in reserved.items()},
    }


def test_one_rank_over_plan_is_named():
    flags = memory_flags([mem_record({0: 35.0, 1: 35.0, 2: 35.0, 3: 41.0})], planned_gib=36.0)
    assert kinds(flags) == ["memory"]
    assert flags[0].level == "warning"
    assert "rank 3" in flags[0].text and "41.0 GiB" in flags[0].text and "36.0 GiB" in flags[0].text
    assert "14%" in flags[0].text  # 41 / 36 - 1


def test_memory_margin_is_ten_percent():
    assert OVER_PLAN == 1.10
    assert memory_flags([mem_record({0: 39.5})], planned_gib=36.0) == []  # 9.7 % over: within the margin
    assert kinds(memory_flags([mem_record({0: 39.7})], planned_gib=36.0)) == ["memory"]


def test_several_ranks_over_plan_name_the_first_and_count_the_rest():
    reserved = {0: 30.0, 10: 45.0, 2: 44.0, 3: 30.0, 7: 50.0}
    flags = memory_flags([mem_record(reserved)], planned_gib=36.0)
    assert kinds(flags) == ["memory", "memory"]
    assert "rank 2 " in flags[0].text  # ranks sort as numbers: 2 before 7 before 10
    assert flags[1].text == "… and 2 more ranks"


def test_no_plan_no_memory_flag():
    record = mem_record({0: 80.0})
    assert memory_flags([record], planned_gib=None) == []
    assert memory_flags([record], planned_gib=0.0) == []
    assert memory_flags([], planned_gib=36.0) == []


def test_memory_uses_the_latest_record_that_has_memory():
    over, under = mem_record({0: 45.0}, step=100), mem_record({0: 35.0}, step=200)
    assert memory_flags([over, under], planned_gib=36.0) == []
    assert kinds(memory_flags([under, over], planned_gib=36.0)) == ["memory"]
    no_mem = {"step": 300, "loss": 1.4, "time": T0 + 300, "mem": {}}
    assert kinds(memory_flags([under, over, no_mem], planned_gib=36.0)) == ["memory"]


def test_ranks_without_reserved_memory_are_skipped():
    record = {"step": 1, "time": T0, "mem": {"0": {"allocated_gib": 50.0}, "1": {"reserved_gib": 50.0}}}
    flags = memory_flags([record], planned_gib=36.0)
    assert len(flags) == 1 and "rank 1" in flags[0].text


# --- all together ---------------------------------------------------------------------------------------


def test_assess_combines_every_flag():
    records = with_evals(descending(40), [1.10, 1.20, 1.40])
    last = records[-1]
    records.append(
        {**mem_record({0: 50.0, 1: 50.0}), "step": last["step"] + 10, "loss": float("nan"), "time": last["time"] + 1}
    )
    flags = assess(records, now=records[-1]["time"] + 3600, running=True, gpu_util=0.0, planned_gib=36.0)
    assert kinds(flags) == ["nan", "overfit", "stall", "memory", "memory"]
    assert [f.level for f in flags] == ["error", "warning", "error", "warning", "warning"]


def test_assess_defaults_skip_memory_and_treat_gpu_util_as_unknown():
    records = train([2.0] * 10)
    records.append({**mem_record({0: 80.0}, step=110), "time": records[-1]["time"] + 20})
    flags = assess(records, now=records[-1]["time"] + 3600, running=True)
    assert kinds(flags) == ["stall"] and flags[0].level == "warning"


def test_assess_is_quiet_on_a_healthy_run():
    records = with_evals(descending(60), [1.6, 1.5, 1.45, 1.42])
    assert assess(records, now=records[-1]["time"] + 5, running=True, gpu_util=95.0, planned_gib=36.0) == []


def test_assess_is_quiet_through_the_whole_recording():
    records = recording()
    plan = json.loads((RECORDING / "plan.json").read_text())["per_gpu"]["peak_reserved_gib"]
    for n in range(1, len(records) + 1):
        now = records[n - 1]["time"] + 1.0
        assert assess(records[:n], now=now, running=True, gpu_util=90.0, planned_gib=plan) == [], n


# --- learning-curve diagnosis (seed 002 §7.2) ----------------------------------------------------


def curve(train, evals=()):
    recs = [{"step": i + 1, "loss": v} for i, v in enumerate(train)]
    for step, v in evals:
        recs.append({"step": step, "loss": None, "eval_loss": v})
    return sorted(recs, key=lambda r: (r["step"], r["loss"] is None))


def test_a_flat_high_train_loss_is_under_fitting_with_what_to_do():
    from runner.watch.health import curve_flags

    flags = curve_flags(curve([5.0 + 0.01 * (i % 3) for i in range(40)]), finished=False)
    assert kinds(flags) == ["underfit"] and "learning rate" in flags[0].text


def test_a_loss_still_falling_steeply_at_the_end_of_a_finished_run_says_train_longer():
    from runner.watch.health import curve_flags

    falling = [5.0 * 0.97**i for i in range(50)]
    assert kinds(curve_flags(curve(falling), finished=True)) == ["underfit"]
    assert "train longer" in curve_flags(curve(falling), finished=True)[0].text
    assert curve_flags(curve(falling), finished=False) == []  # still running: nothing to say yet
    plateau = [max(1.0, 5.0 * 0.8**i) for i in range(50)]
    assert curve_flags(curve(plateau), finished=True) == []  # a good fit: it levelled off


def test_an_eval_loss_far_below_train_or_too_noisy_flags_the_validation_set():
    from runner.watch.health import curve_flags

    train = [max(2.0, 5.0 * 0.9**i) for i in range(40)]
    easy = curve_flags(curve(train, [(10, 0.9), (20, 0.8), (30, 0.8), (40, 0.7)]), finished=True)
    assert kinds(easy) == ["validation"] and "representative" in easy[0].text
    noisy = curve_flags(curve(train, [(10, 2.1), (20, 3.5), (30, 1.9), (40, 3.6)]), finished=True)
    assert kinds(noisy) == ["validation"] and "eval_split" in noisy[0].text
    steady = curve_flags(curve(train, [(10, 2.3), (20, 2.2), (30, 2.2), (40, 2.2)]), finished=True)
    assert steady == []


def test_over_fitting_names_the_lowest_eval_loss_and_the_checkpoint_before_it():
    from runner.watch.health import overfit_flags

    train = [5.0 * 0.95**i for i in range(40)]
    recs = curve(train, [(10, 3.0), (20, 2.5), (25, 2.6), (30, 2.8), (40, 3.1)])
    flag = overfit_flags(recs, checkpoints=[10, 20, 30, 40])[0]
    assert "2.500 at step 20" in flag.text and "checkpoint-20" in flag.text
