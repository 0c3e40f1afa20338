import json

import pytest

from emoreg.errors import DataFormatError
from emoreg.evals.ab_items import ABItem, read_ab_items, render_prompt, score_ab_items
from emoreg.evals.scoring import score_continuations


def _write(tmp_path, rows):
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_read_public_format(tmp_path):
    path = _write(tmp_path, [
        {"question": "Q1\n (A) x\n (B) y\n\nAnswer:", "answer_matching_behavior": " (A)",
         "answer_not_matching_behavior": " (B)", "sample_id": "s1"},
        {"question": "Q2 (A) (B) (C) Answer:", "answer_matching_behavior": " (C)",
         "answer_not_matching_behavior": [" (A)", " (B)"]},
    ])
    items = read_ab_items(path)
    assert items[0] == ABItem("s1", "Q1\n (A) x\n (B) y\n\nAnswer:", " (A)", (" (B)",))
    assert items[1].id == "1" and items[1].not_matching == (" (A)", " (B)")


@pytest.mark.parametrize("row, message", [
    ({"answer_matching_behavior": " (A)", "answer_not_matching_behavior": " (B)"}, "line 1: missing field 'question'"),
    ({"question": "q", "answer_matching_behavior": " (A)"}, "line 1: field 'answer_not_matching_behavior'"),
    ({"question": "q", "answer_matching_behavior": " (A)", "answer_not_matching_behavior": " (A)"}, "also listed"),
])
def test_bad_rows(tmp_path, row, message):
    with pytest.raises(DataFormatError, match=message):
        read_ab_items(_write(tmp_path, [row]))


def test_scores_match_direct_continuation_scores(tiny_llama, tiny_tokenizer):
    items = [ABItem("a", "Is ice cold?\n (A) yes\n (B) no\n\nAnswer:", " (A)", (" (B)",)),
             ABItem("b", "Pick one (A) (B) (C) Answer:", " (C)", (" (A)", " (B)"))]
    records = score_ab_items(tiny_llama, tiny_tokenizer, items, template="raw", batch_size=3)
    for item, record in zip(items, records):
        answers = (item.matching, *item.not_matching)
        direct = score_continuations(tiny_llama, tiny_tokenizer, [item.question] * len(answers), list(answers))
        assert list(record["logprobs"].values()) == pytest.approx([s.logprob for s in direct], abs=1e-4)
        values = [s.logprob for s in direct]
        assert record["shows_behavior"] == (values[0] > max(values[1:]))


def test_chat_template_rendering(tiny_tokenizer):
    prompt, keep_space = render_prompt(tiny_tokenizer, "Q?", "chat")
    assert "Q?" in prompt and prompt.rstrip().endswith("assistant") and not keep_space
    with pytest.raises(DataFormatError, match="unknown template"):
        render_prompt(tiny_tokenizer, "Q?", "xml")
