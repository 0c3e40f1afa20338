"""emoreg.vectors.activations: last-prompt-token and reply-mean states, padding- and sink-proof."""

from __future__ import annotations

import pytest
import torch

from emoreg.errors import ConfigError
from emoreg.models.layout import find_decoder_layers
from emoreg.vectors.activations import (
    encode_pairs,
    pad_pairs,
    position_ids_from_mask,
    read_states,
    read_token_states,
)
from tests.regularizer_helpers import LayerOutputs
from tests.tiny_models import make_tiny_model

PROMPTS = ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nA much longer question about the weather today?<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nmid-sized prompt<|im_end|>\n<|im_start|>assistant\n"]
REPLIES = ["Sure.", "It will rain later, I think, and then clear up.", ""]


def hand_states(model, tokenizer, prompt, reply, layer):
    """Unpadded single-sequence forward: state at the last prompt token and mean over the reply tokens."""
    (prompt_ids, reply_ids), = encode_pairs(tokenizer, [prompt], [reply])
    ids = torch.tensor([prompt_ids + reply_ids])
    with LayerOutputs(model) as recorded, torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    hidden = recorded.outputs[layer][0].float()
    start = hidden[len(prompt_ids) - 1]
    response = hidden[len(prompt_ids):].mean(0) if reply_ids else torch.zeros_like(start)
    return start, response, len(reply_ids)


def test_pad_pairs_left_and_right():
    pairs = [([5, 6, 7], [8]), ([9, 10], [])]
    ids, mask, last, reply = pad_pairs(pairs, pad_id=0, padding_side="left")
    assert ids.tolist() == [[5, 6, 7, 8], [0, 0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert last.tolist() == [2, 3]
    assert reply.tolist() == [[False, False, False, True], [False, False, False, False]]
    ids, mask, last, reply = pad_pairs(pairs, pad_id=0, padding_side="right")
    assert ids.tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert last.tolist() == [2, 1]
    assert reply[0].tolist() == [False, False, False, True] and not reply[1].any()
    with pytest.raises(ConfigError, match="padding_side"):
        pad_pairs(pairs, pad_id=0, padding_side="middle")


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 0, 0]]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # gpt2: absolute positions, so position ids must be right
@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_readings_equal_unpadded_hand_computation(arch, side, tiny_tokenizer):
    model = make_tiny_model(arch)
    layer = 2
    got = read_states(model, tiny_tokenizer, PROMPTS, [layer], replies=REPLIES, batch_size=3, padding_side=side)
    for i, (prompt, reply) in enumerate(zip(PROMPTS, REPLIES)):
        start, response, count = hand_states(model, tiny_tokenizer, prompt, reply, layer)
        torch.testing.assert_close(got.start[layer][i], start, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.response[layer][i], response, atol=1e-5, rtol=1e-4)
        assert int(got.response_tokens[i]) == count
    assert got.response_tokens[2] == 0 and not got.response[layer][2].any()


def test_padding_and_sink_never_enter_a_reading(tiny_tokenizer):
    """Poison the read layer's output at padding and sink positions: the readings do not move."""
    model = make_tiny_model("llama")
    layer = 3
    # rows longest first: the batch order read_states uses, so the poison mask below lines up with its batch
    rows = sorted(zip(PROMPTS, REPLIES), key=lambda row: -len(row[0] + row[1]))
    prompts, replies = [p for p, _ in rows], [r for _, r in rows]
    assert replies[0], "row 0 needs a reply for the last check"
    clean = read_states(model, tiny_tokenizer, prompts, [layer], replies=replies, batch_size=3)
    pairs = encode_pairs(tiny_tokenizer, prompts, replies)
    _, mask, _, _ = pad_pairs(pairs, tiny_tokenizer.pad_token_id, "left")
    poison = (mask == 0).clone()
    poison[torch.arange(mask.shape[0]), mask.argmax(dim=1)] = True  # first real token = attention sink

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        edited = hidden + 1e4 * poison[..., None].to(hidden.dtype)
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    def read_poisoned():
        handle = find_decoder_layers(model)[layer].register_forward_hook(hook)
        try:
            return read_states(model, tiny_tokenizer, prompts, [layer], replies=replies, batch_size=3)
        finally:
            handle.remove()

    poisoned = read_poisoned()
    assert poison.any()
    torch.testing.assert_close(poisoned.start[layer], clean.start[layer])
    torch.testing.assert_close(poisoned.response[layer], clean.response[layer])
    # The poison does reach the reader: on a reply token it moves that row's response mean.
    poison[0, -1] = True
    assert not torch.allclose(read_poisoned().response[layer][0], clean.response[layer][0])


def test_readings_do_not_depend_on_batch_composition(tiny_tokenizer):
    model = make_tiny_model("llama")
    together = read_states(model, tiny_tokenizer, PROMPTS, [1, 3], replies=REPLIES, batch_size=2)
    alone = read_states(model, tiny_tokenizer, PROMPTS, [1, 3], replies=REPLIES, batch_size=1)
    for layer in (1, 3):
        torch.testing.assert_close(together.start[layer], alone.start[layer], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(together.response[layer], alone.response[layer], atol=1e-5, rtol=1e-4)
    assert together.prompt_tokens.tolist() == [len(p) for p, _ in encode_pairs(tiny_tokenizer, PROMPTS)]


def test_no_replies_gives_start_only_and_hooks_are_removed(tiny_tokenizer):
    model = make_tiny_model("llama")
    got = read_states(model, tiny_tokenizer, PROMPTS, [2], batch_size=2)
    assert got.response == {} and got.start[2].shape == (3, 64)
    assert not got.response_tokens.any()
    assert all(not layer._forward_hooks for layer in find_decoder_layers(model))


def test_bad_input_is_a_clear_error(tiny_tokenizer):
    model = make_tiny_model("llama")
    with pytest.raises(ConfigError, match="no prompts"):
        read_states(model, tiny_tokenizer, [], [1])
    with pytest.raises(ConfigError, match="attention sink"):
        read_token_states(model, [([7], [8, 9])], [1], pad_id=0)
    with pytest.raises(ConfigError, match="out of range"):
        read_states(model, tiny_tokenizer, PROMPTS, [9])
    with pytest.raises(ConfigError, match="2 replies"):
        read_states(model, tiny_tokenizer, PROMPTS, [1], replies=REPLIES[:2])
    with pytest.raises(ConfigError, match="batch_size"):
        read_states(model, tiny_tokenizer, PROMPTS, [1], batch_size=0)
    assert all(not layer._forward_hooks for layer in find_decoder_layers(model))
