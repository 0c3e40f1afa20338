import math

import pytest
import torch

from emoreg.evals.scoring import mean_token_nll, score_continuations, score_texts
from tests.tiny_models import make_tiny_llama, make_tiny_tokenizer


def _manual(model, tokenizer, prompt, continuation):
    p = tokenizer(prompt)["input_ids"]
    c = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + c])).logits[0]
    logprobs = torch.log_softmax(logits.float(), -1)
    return sum(float(logprobs[len(p) - 1 + k, t]) for k, t in enumerate(c))


def test_batched_scores_equal_single_item_scores(tiny_llama, tiny_tokenizer):
    prompts = ["Question: 2+2? Answer:", "Is the sky green? (A) yes (B) no Answer:", "Hi"]
    continuations = [" 4", " (B)", " there, friend"]
    scores = score_continuations(tiny_llama, tiny_tokenizer, prompts, continuations, batch_size=2)
    for score, prompt, continuation in zip(scores, prompts, continuations):
        assert score.logprob == pytest.approx(_manual(tiny_llama, tiny_tokenizer, prompt, continuation), abs=1e-4)
        assert score.tokens == len(tiny_tokenizer(continuation, add_special_tokens=False)["input_ids"])


def test_scoring_restores_training_mode(tiny_llama, tiny_tokenizer):
    tiny_llama.train()
    score_continuations(tiny_llama, tiny_tokenizer, ["a"], [" b"])
    assert tiny_llama.training


def test_bad_inputs(tiny_llama, tiny_tokenizer):
    with pytest.raises(ValueError, match="2 prompts but 1"):
        score_continuations(tiny_llama, tiny_tokenizer, ["a", "b"], [" c"])
    with pytest.raises(ValueError, match="has no tokens"):
        score_continuations(tiny_llama, tiny_tokenizer, ["a"], [""])


def test_mean_token_nll_matches_the_model_loss(tiny_llama):
    tokenizer = make_tiny_tokenizer()
    texts = ["the water cycle moves water", "tides follow the moon"]
    nll, count = mean_token_nll(tiny_llama, tokenizer, texts, batch_size=2)
    losses, tokens = 0.0, 0
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            loss = tiny_llama(input_ids=ids, labels=ids).loss
        n = ids.shape[1] - 1
        losses += float(loss) * n
        tokens += n
    assert count == tokens
    assert nll == pytest.approx(losses / tokens, rel=1e-5)
    assert math.isfinite(math.exp(nll))


def test_score_texts_sums_match_mean_token_nll_and_do_not_depend_on_batching(tiny_llama):
    tokenizer = make_tiny_tokenizer()
    texts = ["the water cycle moves water", "tides", "a much longer sentence about the moon and the sea"]
    batched = score_texts(tiny_llama, tokenizer, texts, batch_size=3)
    single = [score_texts(tiny_llama, tokenizer, [text])[0] for text in texts]
    for b, s, text in zip(batched, single, texts):
        assert b.tokens == s.tokens == len(text) - 1
        assert b.nll == pytest.approx(s.nll, rel=1e-5) and b.kl is None and not b.truncated
    nll, count = mean_token_nll(tiny_llama, tokenizer, texts)
    assert sum(s.nll for s in batched) / sum(s.tokens for s in batched) == pytest.approx(nll, rel=1e-5)
    assert count == sum(s.tokens for s in batched)
    assert tokenizer.padding_side == "right"


def test_score_texts_truncates_and_measures_kl(tiny_llama):
    tokenizer = make_tiny_tokenizer()
    tokenizer.padding_side = "left"
    cut = score_texts(tiny_llama, tokenizer, ["abcdefghij", "abc"], max_length=4)
    assert [(s.tokens, s.truncated) for s in cut] == [(3, True), (2, False)]
    assert tokenizer.padding_side == "left"
    same = score_texts(tiny_llama, tokenizer, ["abcdefghij"], reference=tiny_llama)
    assert same[0].kl == 0.0
    other = make_tiny_llama(seed=1)
    assert score_texts(tiny_llama, tokenizer, ["abcdefghij"], reference=other)[0].kl > 0
    with pytest.raises(ValueError, match="vocabulary"):
        score_texts(tiny_llama, tokenizer, ["abc"], reference=make_tiny_llama(vocab_size=300))
    with pytest.raises(ValueError, match="max_length"):
        score_texts(tiny_llama, tokenizer, ["abc"], max_length=1)
