"""Schedules: plan shapes, falling levels, the pass counts of PAPER.md, bad plans rejected."""
import pytest

from schedule import (context_level, diagonal, forward_passes, make_plan, paper, sequential_passes, uniform,
                      validate_plan, warp)


def test_warp():
    assert warp(0.0) == 0.0 and warp(1.0) == 1.0
    assert round(warp(0.1), 3) == 0.357                 # PAPER.md: w(0.1) = 0.357 with shift 5
    assert warp(0.5, shift=1.0) == 0.5


def test_plan_lengths():
    assert [len(p) for p in diagonal(7)] == [4, 3, 2, 2, 2, 2, 2]
    assert [len(p) for p in paper(7)] == [5, 4, 3, 2, 2, 2, 2]
    assert [len(p) for p in uniform(7)] == [4] * 7
    assert diagonal(2) == [[1.0, warp(0.75), warp(0.5), warp(0.1)], [1.0, warp(0.75), warp(0.1)]]
    assert diagonal(3)[2] == [1.0, warp(0.1)]
    assert uniform(1)[0] == [1.0, warp(0.75), warp(0.5), warp(0.25)]


@pytest.mark.parametrize("plan", [diagonal(9), paper(9), uniform(9), make_plan(9, 5, fall=2, floor=1)])
def test_levels_start_at_one_and_fall_strictly(plan):
    for levels in plan:
        assert levels[0] == 1.0
        assert all(0 < b < a <= 1 for a, b in zip(levels, levels[1:]))


def test_forward_pass_counts():
    assert forward_passes(diagonal(7), "last") == 17              # PAPER.md: 17 passes for 7 chunks
    assert forward_passes(uniform(7, steps=4), "clean") == 35      # Self-Forcing: 4 steps + 1 refresh
    assert forward_passes(diagonal(7), "renoise") == 24
    assert sequential_passes(diagonal(8), "last", fused=True) == 19 - 6  # chunk 0 finishes alone
    assert sequential_passes(uniform(8), "clean", fused=False) == 40


def test_context_rules():
    levels = diagonal(1)[0]
    assert context_level("clean", levels) == 0.0
    assert context_level("last", levels) is None
    assert context_level("renoise", levels, renoise_level=0.5) == 0.5
    with pytest.raises(ValueError, match="unknown context rule"):
        context_level("fresh", levels)


@pytest.mark.parametrize("plan, message", [
    ([], "at least one chunk"),
    ([[1.0, 0.5], []], "no step"),
    ([[0.9, 0.5]], "starts at level"),
    ([[1.0, 0.5, 0.5]], "fall strictly"),
    ([[1.0, 0.6, 0.7]], "fall strictly"),
    ([[1.0, 0.0]], "outside"),
])
def test_bad_plans_are_rejected(plan, message):
    with pytest.raises(ValueError, match=message):
        validate_plan(plan)


def test_constructor_rejects_impossible_plans():
    with pytest.raises(ValueError, match="grid has"):
        make_plan(3, first_steps=9)
