"""Batched reply generation: order, padding independence, seeding, restored state, caps."""

from __future__ import annotations

import torch

from emoreg.models.generation import ReplyGenerationConfig, generate_replies, render_conversation

CONVERSATIONS = [[{"role": "user", "content": "hi"}],
                 [{"role": "user", "content": "a much longer message than the first one"}],
                 [{"role": "system", "content": "be brief"}, {"role": "user", "content": "and a third"}]]


def test_render_uses_chat_template_and_generation_prompt(tiny_tokenizer):
    text = render_conversation(tiny_tokenizer, CONVERSATIONS[0])
    assert text.rstrip().endswith("assistant")
    assert "hi" in text


def test_render_without_template_is_a_plain_transcript(tiny_tokenizer):
    from tests.tiny_models import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = None
    assert render_conversation(tokenizer, CONVERSATIONS[2]) == "system: be brief\nuser: and a third\nassistant:"


def test_greedy_replies_do_not_depend_on_batching(tiny_llama, tiny_tokenizer):
    settings = ReplyGenerationConfig(max_new_tokens=6)
    together = generate_replies(tiny_llama, tiny_tokenizer, CONVERSATIONS, settings, batch_size=3)
    alone = [generate_replies(tiny_llama, tiny_tokenizer, [c], settings, batch_size=1)[0] for c in CONVERSATIONS]
    assert together == alone


def test_sampling_is_seeded_and_leaves_global_rng_alone(tiny_llama, tiny_tokenizer):
    settings = ReplyGenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.5)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = generate_replies(tiny_llama, tiny_tokenizer, CONVERSATIONS, settings, seed=7, batch_size=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = generate_replies(tiny_llama, tiny_tokenizer, CONVERSATIONS, settings, seed=7, batch_size=2)
    other = generate_replies(tiny_llama, tiny_tokenizer, CONVERSATIONS, settings, seed=8, batch_size=2)
    assert first == again
    assert first != other


def test_state_is_restored(tiny_llama, tiny_tokenizer):
    from tests.tiny_models import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    tokenizer.padding_side = "right"
    tiny_llama.train()
    generate_replies(tiny_llama, tokenizer, CONVERSATIONS[:1], ReplyGenerationConfig(max_new_tokens=2))
    assert tokenizer.padding_side == "right"
    assert tiny_llama.training


def test_capped_lowers_but_never_raises():
    cap = ReplyGenerationConfig(max_new_tokens=100, do_sample=True, temperature=0.7)
    assert cap.capped(384).max_new_tokens == 100
    lowered = cap.capped(64)
    assert lowered.max_new_tokens == 64 and lowered.do_sample and lowered.temperature == 0.7
