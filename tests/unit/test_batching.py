"""plan_batches: every input exactly once, max_batch respected, sorted groups, honest token accounting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.batching import FORWARD_OVERHEAD_TOKENS, BatchItem, BatchPlan, next_pass, plan_batches

items_st = st.lists(
    st.builds(BatchItem, length=st.integers(1, 600), rows=st.integers(1, 6)), min_size=0, max_size=60
)


def group_cost(items: list[BatchItem], group: list[int]) -> int:
    """Tokens a padded forward over `group` costs: every row padded to the group's longest."""
    return sum(items[i].rows for i in group) * max(items[i].length for i in group)


@settings(max_examples=300, deadline=None)
@given(items=items_st, max_batch=st.integers(1, 16), overhead=st.integers(0, 200))
def test_plan_invariants(items: list[BatchItem], max_batch: int, overhead: int) -> None:
    plan = plan_batches(items, max_batch, overhead)
    flat = [i for g in plan.groups for i in g]
    assert sorted(flat) == list(range(len(items)))  # every index exactly once
    assert all(1 <= len(g) <= max_batch for g in plan.groups)
    lengths = [items[i].length for i in flat]
    assert lengths == sorted(lengths)  # sorted grouping: groups never interleave lengths
    assert plan.real_tokens == sum(it.length * it.rows for it in items)
    assert plan.padded_tokens == sum(group_cost(items, g) for g in plan.groups)
    assert plan.padded_tokens >= plan.real_tokens


@settings(max_examples=300, deadline=None)
@given(items=items_st, max_batch=st.integers(1, 16), overhead=st.integers(0, 200))
def test_groups_cut_only_when_full_or_when_padding_outweighs_a_forward(
    items: list[BatchItem], max_batch: int, overhead: int
) -> None:
    plan = plan_batches(items, max_batch, overhead)
    for group in plan.groups:  # each member added at most `overhead` padding to the ones before it
        for n in range(1, len(group)):
            before = group[:n]
            longest = max(items[i].length for i in before)
            added = sum(items[i].rows for i in before) * (items[group[n]].length - longest)
            assert added <= overhead
    for prev, nxt in zip(plan.groups, plan.groups[1:], strict=False):  # ...and a cut was needed
        longest = max(items[i].length for i in prev)
        would_add = sum(items[i].rows for i in prev) * (items[nxt[0]].length - longest)
        assert len(prev) == max_batch or would_add > overhead


@settings(max_examples=100, deadline=None)
@given(length=st.integers(1, 512), count=st.integers(1, 40), max_batch=st.integers(1, 16))
def test_equal_lengths_fill_batches(length: int, count: int, max_batch: int) -> None:
    plan = plan_batches([BatchItem(length)] * count, max_batch)
    assert [len(g) for g in plan.groups] == [max_batch] * (count // max_batch) + (
        [count % max_batch] if count % max_batch else []
    )
    assert plan.padded_tokens == plan.real_tokens == length * count


def test_empty_input() -> None:
    assert plan_batches([], 8) == BatchPlan(groups=[], real_tokens=0, padded_tokens=0)


def test_short_and_long_inputs_are_not_padded_together() -> None:
    items = [BatchItem(500), BatchItem(5), BatchItem(6), BatchItem(480)]
    plan = plan_batches(items, max_batch=8)
    assert plan.groups == [[1, 2], [3, 0]]
    assert plan.real_tokens == 991
    assert plan.padded_tokens == 2 * 6 + 2 * 500


def test_small_length_differences_share_a_forward() -> None:
    items = [BatchItem(12), BatchItem(10), BatchItem(11), BatchItem(13)]
    plan = plan_batches(items, max_batch=8)
    assert plan.groups == [[1, 2, 0, 3]]
    assert plan.padded_tokens == 4 * 13 and plan.real_tokens == 46


def test_max_batch_splits_equal_items_in_order() -> None:
    plan = plan_batches([BatchItem(7)] * 5, max_batch=2)
    assert plan.groups == [[0, 1], [2, 3], [4]]


def test_rows_multiply_the_padding_cost() -> None:
    # A QA item with 4 windows of 20 tokens: a 30-token item joining would pad 4 rows by 10 = 40 > 24.
    items = [BatchItem(20, rows=4), BatchItem(30)]
    assert plan_batches(items, max_batch=8).groups == [[0], [1]]
    # With one row, the same join pads 10 tokens, under the overhead, so they share a forward pass.
    joined = plan_batches([BatchItem(20), BatchItem(30)], max_batch=8)
    assert joined.groups == [[0, 1]]
    assert joined.padded_tokens == 60 and joined.real_tokens == 50


def test_the_overhead_threshold_is_inclusive() -> None:
    exactly = plan_batches([BatchItem(10), BatchItem(10 + FORWARD_OVERHEAD_TOKENS)], max_batch=8)
    assert exactly.groups == [[0, 1]]
    over = plan_batches([BatchItem(10), BatchItem(11 + FORWARD_OVERHEAD_TOKENS)], max_batch=8)
    assert over.groups == [[0], [1]]


@pytest.mark.parametrize("max_batch", [1, 3])
def test_max_batch_bounds_equal_items(max_batch: int) -> None:
    plan = plan_batches([BatchItem(4), BatchItem(4), BatchItem(4)], max_batch=max_batch)
    assert all(len(g) <= max_batch for g in plan.groups)
    assert sorted(i for g in plan.groups for i in g) == [0, 1, 2]


# ---- the token budget per forward pass -------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(items=items_st, max_batch=st.integers(1, 16), budget=st.integers(1, 2000))
def test_the_token_budget_and_the_cap_hold_and_every_input_runs_once(
    items: list[BatchItem], max_batch: int, budget: int
) -> None:
    plan = plan_batches(items, max_batch, max_tokens=budget)
    assert sorted(i for g in plan.groups for i in g) == list(range(len(items)))
    for group in plan.groups:
        assert 1 <= len(group) <= max_batch
        assert len(group) == 1 or group_cost(items, group) <= budget  # over budget only alone


def test_a_long_input_runs_alone_and_short_ones_fill_passes() -> None:
    items = [BatchItem(10)] * 6 + [BatchItem(300)] + [BatchItem(12)] * 6
    plan = plan_batches(items, max_batch=8, max_tokens=64)
    assert [6] in plan.groups  # 300 tokens: over the budget, so alone
    short = [g for g in plan.groups if 6 not in g]
    assert [len(g) for g in short] == [6, 5, 1]  # 6 x 10 and 5 x 12 tokens: as many as 64 hold
    assert all(group_cost(items, g) <= 64 for g in short)


def test_qa_windows_count_against_the_budget() -> None:
    items = [BatchItem(100, rows=4), BatchItem(100, rows=4), BatchItem(100)]
    assert plan_batches(items, max_batch=8, max_tokens=800).groups == [[0, 1], [2]]
    assert plan_batches(items, max_batch=8, max_tokens=900).groups == [[0, 1, 2]]


def test_next_pass_takes_the_oldest_input_and_those_that_pad_well_with_it() -> None:
    items = [BatchItem(300), BatchItem(10), BatchItem(290), BatchItem(11), BatchItem(295)]
    assert next_pass(items, max_batch=8, max_tokens=1024) == [0, 2, 4]
    assert next_pass(items, max_batch=2, max_tokens=1024) == [0]  # the plan pairs 290 with 295
    assert next_pass(items, max_batch=8, max_tokens=500) == [0]
    assert next_pass(items[1:], max_batch=8, max_tokens=1024) == [0, 2]
    assert next_pass([], max_batch=8) == []
