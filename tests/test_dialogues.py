"""Dialogue corpus: the built-in files, the loader's errors, rendering and the read turn's tokens."""

import copy
import json
from collections import Counter

import pytest

from emoreg.errors import DataFormatError
from emoreg.vectors.capture import tokenize_span_batches
from emoreg.vectors.corpus import (
    BUILTIN_EMOTIONS,
    banned_words_in,
    builtin_corpus_dir,
    load_banned_words,
    load_builtin_dialogues,
    words,
)
from emoreg.vectors.dialogues import Dialogue, load_dialogues, render_dialogue

TOPICS = {"work", "family", "money", "health", "travel", "technology", "home", "school", "friends", "food"}


@pytest.fixture(scope="module")
def dialogues():
    return load_builtin_dialogues()


def test_every_builtin_emotion_has_ten_topics_times_two_speakers(dialogues):
    cells = Counter((d.emotion, d.topic, d.speaker) for d in dialogues)
    assert {d.emotion for d in dialogues} == set(BUILTIN_EMOTIONS)
    for emotion in BUILTIN_EMOTIONS:
        for topic in TOPICS:
            for speaker in ("user", "assistant"):
                assert cells[(emotion, topic, speaker)] == 1, (emotion, topic, speaker)


def test_no_dialogue_names_its_emotion(dialogues):
    root = builtin_corpus_dir() / "banned"
    banned = {e: load_banned_words(root / f"{e}.txt") for e in BUILTIN_EMOTIONS}
    offenders = [(d.emotion, found) for d in dialogues for text in (d.user, d.assistant or "")
                 if (found := banned_words_in(text, banned[d.emotion]))]
    assert not offenders, offenders[:10]


def test_read_turns_are_chat_length_and_varied(dialogues):
    lengths = [len(words(d.read_text)) for d in dialogues]
    assert 30 <= min(lengths) and max(lengths) <= 110, (min(lengths), max(lengths))
    grams = [tuple(w[i:i + 3]) for d in dialogues for w in [words(d.read_text)] for i in range(len(w) - 2)]
    assert len(set(grams)) / len(grams) > 0.8
    for emotion in BUILTIN_EMOTIONS:  # no two items of one emotion share a 6-word run
        seen = {}
        for i, d in enumerate(x for x in dialogues if x.emotion == emotion):
            w = words(d.read_text)
            for run in {tuple(w[j:j + 6]) for j in range(len(w) - 5)}:
                assert seen.setdefault(run, i) == i, (emotion, " ".join(run))


def test_load_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"emotion": "calm", "speaker": "narrator", "user": "hi"}) + "\n")
    with pytest.raises(DataFormatError, match=r"d\.jsonl, line 1: field 'speaker' must be 'user' or 'assistant'"):
        load_dialogues(path)
    path.write_text(json.dumps({"emotion": "calm", "speaker": "assistant", "user": "hi"}) + "\n")
    with pytest.raises(DataFormatError, match=r"line 1: missing field 'assistant'"):
        load_dialogues(path)
    path.write_text(json.dumps({"emotion": "Calm Mood", "speaker": "user", "user": "hi"}) + "\n")
    with pytest.raises(DataFormatError, match=r"field 'emotion' must be a lower-case name"):
        load_dialogues(path)
    path.write_text("")
    with pytest.raises(DataFormatError, match="no dialogues found"):
        load_dialogues(path)
    path.write_text(json.dumps({"emotion": "calm", "speaker": "user", "user": "Steady now."}) + "\n")
    assert load_dialogues(path) == [Dialogue("calm", "default", "user", "Steady now.")]


@pytest.mark.parametrize("speaker", ["user", "assistant"])
def test_the_span_covers_exactly_the_read_turn(tiny_tokenizer, speaker):
    dialogue = Dialogue("calm", "t", speaker, "What time is it in Oslo?",
                        "It is noon there, and the fjord is still." if speaker == "assistant" else None)
    text, (start, end) = render_dialogue(tiny_tokenizer, dialogue)
    assert text[start:end] == dialogue.read_text
    assert text.index(dialogue.user) < start or speaker == "user"


def test_render_without_a_chat_template(tiny_tokenizer):
    plain = copy.deepcopy(tiny_tokenizer)  # the fixture is shared: change a copy
    plain.chat_template = None
    text, (start, end) = render_dialogue(plain, Dialogue("sad", "t", "assistant", "Hi.", "The rain kept on."))
    assert text == "User: Hi.\nAssistant: The rain kept on." and text[start:end] == "The rain kept on."


@pytest.mark.parametrize("side", ["left", "right"])
def test_span_batches_select_the_turn_tokens_on_either_padding_side(tiny_tokenizer, side):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.padding_side = side
    items = [Dialogue("calm", "t", "assistant", "Short?", "A reply of some length here."),
             Dialogue("calm", "t", "user", "A much longer user message that needs padding elsewhere, yes.")]
    rendered = [render_dialogue(tokenizer, d) for d in items]
    batches = list(tokenize_span_batches(tokenizer, [r[0] for r in rendered], [r[1] for r in rendered],
                                         batch_size=2, max_length=512))
    assert len(batches) == 1
    batch = batches[0]
    for row, index in enumerate(batch.indices):
        ids = batch.input_ids[row][batch.selected[row]]
        assert tokenizer.decode(ids) == items[index].read_text
        assert not (batch.selected[row] & (batch.attention_mask[row] == 0)).any()
        real = batch.attention_mask[row].nonzero().flatten()
        if side == "right":
            assert real[0] == 0
        else:
            assert real[-1] == batch.input_ids.shape[1] - 1
    with pytest.raises(ValueError, match="2 texts but 1 spans"):
        next(tokenize_span_batches(tokenizer, ["a", "b"], [(0, 1)], batch_size=2, max_length=8))
