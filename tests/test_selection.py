import pytest
import torch

from emoreg.errors import ConfigError
from emoreg.regularization.selection import BatchContext, content_positions, select_tokens

CPU = torch.device("cpu")


def test_all_excludes_sink_and_padding_both_sides():
    right = BatchContext(attention_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    left = BatchContext(attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
    assert select_tokens(right, "all", 2, 4, 1, CPU).tolist() == [[False, True, True, False], [False, True, True, True]]
    assert select_tokens(left, "all", 2, 4, 1, CPU).tolist() == [[False, False, True, True], [False, True, True, True]]


def test_completion_and_last_prompt():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]])
    labels = torch.tensor([[-100, -100, -100, 7, 8, -100], [-100, -100, -100, -100, 5, 6]])
    context = BatchContext(attention_mask=mask, labels=labels)
    assert select_tokens(context, "completion", 2, 6, 1, CPU).tolist() == [
        [False, False, False, True, True, False], [False, False, False, False, True, True]]
    assert select_tokens(context, "last_prompt", 2, 6, 1, CPU).tolist() == [
        [False, False, True, False, False, False], [False, False, False, True, False, False]]


def test_completion_mask_wins_over_labels():
    context = BatchContext(attention_mask=torch.ones(1, 4, dtype=torch.long),
                           labels=torch.tensor([[1, 2, 3, 4]]), completion_mask=torch.tensor([[0, 0, 1, 1]]))
    assert select_tokens(context, "completion", 1, 4, 1, CPU).tolist() == [[False, False, True, True]]


def test_completion_without_labels_is_an_error():
    with pytest.raises(ConfigError, match="needs the completion tokens"):
        select_tokens(BatchContext(attention_mask=torch.ones(1, 3)), "completion", 1, 3, 1, CPU)


def test_packed_sequences_use_position_ids():
    context = BatchContext(position_ids=torch.tensor([[0, 1, 2, 0, 1]]))
    assert content_positions(context, 1, 5, 1, CPU).tolist() == [[False, True, True, False, True]]


def test_kv_cache_step_uses_the_last_columns():
    context = BatchContext(attention_mask=torch.tensor([[0, 1, 1, 1]]))
    assert content_positions(context, 1, 1, 1, CPU).tolist() == [[True]]
    only_last = BatchContext(attention_mask=torch.tensor([[0, 0, 0, 1]]))
    assert content_positions(only_last, 1, 1, 1, CPU).tolist() == [[False]]


def test_no_context_drops_leading_positions():
    assert content_positions(BatchContext(), 2, 3, 1, CPU).tolist() == [[False, True, True]] * 2
