import torch

from emoreg.vectors.tokens import content_mask, masked_mean, offset_mask, real_token_rank


def test_rank_counts_real_tokens_only_for_both_padding_sides():
    right = torch.tensor([[1, 1, 1, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1]])
    assert real_token_rank(right).tolist() == [[1, 2, 3, 0, 0]]
    assert real_token_rank(left).tolist() == [[0, 0, 1, 2, 3]]


def test_content_mask_drops_first_real_token_whatever_the_padding_side():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert content_mask(right).tolist() == [[False, True, True, False], [False, True, True, True]]
    assert content_mask(left).tolist() == [[False, False, True, True], [False, True, True, True]]
    assert content_mask(right, sink_tokens=2).tolist() == [[False, False, True, False], [False, False, True, True]]
    assert content_mask(right, sink_tokens=0).tolist() == right.bool().tolist()


def test_offset_adapts_to_short_rows():
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0  # a 6-token row
    selected = offset_mask(mask, token_offset=4)
    assert selected[0].tolist() == [False] * 4 + [True] * 6  # offset 4 < 10 // 2
    assert selected[1].tolist() == [False] * 3 + [True] * 3 + [False] * 4  # min(4, 6 // 2) = 3


def test_offset_never_includes_the_sink():
    mask = torch.tensor([[1, 1, 0, 0]])
    assert offset_mask(mask, token_offset=0).tolist() == [[False, True, False, False]]


def test_offset_is_padding_side_invariant():
    right = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    r = offset_mask(right, token_offset=2)
    left_mask = offset_mask(left, token_offset=2)
    assert r.sum() == left_mask.sum() == 4
    assert r[0, :6].tolist() == left_mask[0, 2:].tolist()


def test_masked_mean_matches_manual_mean():
    hidden = torch.randn(2, 5, 3)
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    means, counts = masked_mean(hidden, mask)
    torch.testing.assert_close(means[0], hidden[0, 1:3].mean(0))
    assert counts.tolist() == [2.0, 0.0]
    assert torch.all(means[1] == 0)
