"""The built-in corpus: size, topics, banned words, variety; and user corpus files."""

import itertools
import json
from collections import Counter

import pytest

from emoreg.errors import DataFormatError
from emoreg.vectors.corpus import (
    BUILTIN_EMOTIONS,
    Corpus,
    NeutralText,
    Story,
    banned_words_in,
    load_builtin_corpus,
    load_neutral,
    load_stories,
    words,
)

REQUIRED = ["happy", "sad", "afraid", "angry", "disgusted", "surprised", "ashamed", "guilty", "desperate", "calm",
            "loving", "hostile", "anxious", "proud", "frustrated", "hopeful", "lonely", "grateful", "jealous",
            "bored", "blissful", "brooding", "panicked", "relieved"]


@pytest.fixture(scope="module")
def corpus():
    return load_builtin_corpus()


def test_the_required_emotions_are_built_in(corpus):
    assert set(REQUIRED) <= set(BUILTIN_EMOTIONS)
    assert set(REQUIRED) <= set(corpus.emotions)


def test_at_least_60_stories_per_emotion_over_20_topics(corpus):
    counts = Counter(s.emotion for s in corpus.stories)
    assert min(counts.values()) >= 60, counts
    for emotion in corpus.emotions:
        topics = {s.topic for s in corpus.stories if s.emotion == emotion}
        assert len(topics) >= 20, (emotion, sorted(topics))
    assert len(corpus.topics) >= 20


def test_stories_are_about_a_paragraph(corpus):
    lengths = [len(words(s.text)) for s in corpus.stories]
    assert min(lengths) >= 40, min(lengths)
    assert max(lengths) <= 160, max(lengths)
    assert all("\n" not in s.text for s in corpus.stories)


def test_no_story_names_its_emotion(corpus):
    offenders = []
    for story in corpus.stories:
        found = banned_words_in(story.text, corpus.banned_words[story.emotion])
        if found:
            offenders.append((story.emotion, found, story.text[:60]))
    assert not offenders, offenders[:10]


def test_banned_lists_cover_the_emotion_word(corpus):
    for emotion in REQUIRED:
        banned = corpus.banned_words[emotion]
        assert banned_words_in(emotion, banned), f"{emotion}'s banned list does not ban the word itself"
        assert len(banned) >= 8, (emotion, banned)


# Banned-list words that neutral text may use in their plain, non-emotional sense.
NEUTRAL_SENSES = {"alone", "fret", "possessive", "agitation", "bitter", "isolation"}


def test_neutral_dialogues_are_many_and_emotion_free(corpus):
    assert len(corpus.neutral) >= 300
    assert len({t.topic for t in corpus.neutral}) >= 100
    every_banned = [w for lst in corpus.banned_words.values() for w in lst]
    offenders = [(t.topic, found) for t in corpus.neutral
                 if (found := [w for w in banned_words_in(t.text, every_banned) if w not in NEUTRAL_SENSES])]
    assert not offenders, offenders[:10]
    assert all("User:" in t.text and "Assistant:" in t.text for t in corpus.neutral)


def _ngrams(tokens, n):
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _distinct_ratio(texts, n):
    grams = [g for t in texts for g in _ngrams(words(t), n)]
    return len(set(grams)) / max(1, len(grams))


def test_variety_distinct_ngrams_and_no_near_duplicates(corpus):
    """Reports distinct-n ratios; fails on near-duplicates (shared 8-word runs or high 3-gram Jaccard)."""
    stories = [s.text for s in corpus.stories]
    neutral = [t.text for t in corpus.neutral]
    ratios = {f"stories distinct-{n}": round(_distinct_ratio(stories, n), 3) for n in (1, 2, 3)}
    ratios.update({f"neutral distinct-{n}": round(_distinct_ratio(neutral, n), 3) for n in (2, 3)})
    print("\ncorpus variety:", json.dumps(ratios))
    assert ratios["stories distinct-3"] > 0.7, ratios
    assert ratios["neutral distinct-3"] > 0.5, ratios
    for name, texts in (("stories", stories), ("neutral", neutral)):
        eight = {}
        for i, text in enumerate(texts):
            for gram in set(_ngrams(words(text), 8)):
                if gram in eight and eight[gram] != i:
                    pytest.fail(f"{name} {eight[gram]} and {i} share the 8-word run {' '.join(gram)!r}")
                eight[gram] = i
        sets = [set(_ngrams(words(t), 3)) for t in texts]
        for (i, a), (j, b) in itertools.combinations(enumerate(sets), 2):
            if a and b and len(a & b) / len(a | b) > 0.35:
                pytest.fail(f"{name} {i} and {j} are near-duplicates (3-gram Jaccard {len(a & b) / len(a | b):.2f})")


def test_banned_words_matching_rules():
    assert banned_words_in("She was Happy, so happy!", ["happy"]) == ["happy", "happy"]
    assert banned_words_in("Delightful delights", ["delight*"]) == ["delightful", "delights"]
    assert banned_words_in("the gladiator", ["glad"]) == []
    assert banned_words_in("don't", ["don't"]) == ["don't"]


def test_user_story_file_round_trip_and_errors(tmp_path):
    good = tmp_path / "s.jsonl"
    good.write_text(json.dumps({"emotion": "Smug", "topic": "work", "text": "He leaned back."}) + "\n"
                    + json.dumps({"emotion": "smug", "text": "No topic given."}) + "\n")
    stories = load_stories(good)
    assert stories == [Story("smug", "work", "He leaned back."), Story("smug", "default", "No topic given.")]
    missing = tmp_path / "m.jsonl"
    missing.write_text(json.dumps({"emotion": "smug", "topic": "work", "text": "ok"}) + "\n"
                       + json.dumps({"emotion": "smug", "topic": "work"}) + "\n")
    with pytest.raises(DataFormatError, match=r"m.jsonl, line 2: missing field 'text'"):
        load_stories(missing)
    bad_emotion = tmp_path / "e.jsonl"
    bad_emotion.write_text(json.dumps({"emotion": "two words", "text": "x"}) + "\n")
    with pytest.raises(DataFormatError, match="line 1: field 'emotion'"):
        load_stories(bad_emotion)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataFormatError, match="no stories found"):
        load_stories(empty)
    with pytest.raises(DataFormatError, match="no neutral texts"):
        load_neutral(empty)


def test_adding_and_replacing_emotions(corpus):
    extra = [Story("smug", "work", "x y z"), Story("smug", "home", "a b c"), Story("calm", "work", "mine")]
    merged = corpus.with_stories(extra)
    assert "smug" in merged.emotions
    assert [s.text for s in merged.stories if s.emotion == "calm"] == ["mine"]
    assert len([s for s in merged.stories if s.emotion == "happy"]) == len(
        [s for s in corpus.stories if s.emotion == "happy"])


def test_select_unknown_emotion(corpus):
    with pytest.raises(DataFormatError, match=r"emotions \['smug'\] have no stories"):
        corpus.select(["happy", "smug"])
    assert corpus.select(["sad", "happy"]).emotions == ["sad", "happy"]


def test_content_hash_changes_with_text():
    a = Corpus([Story("a", "t", "x")], [NeutralText("n")])
    b = Corpus([Story("a", "t", "y")], [NeutralText("n")])
    assert a.content_hash() != b.content_hash()
    assert a.content_hash() == Corpus([Story("a", "t", "x")], [NeutralText("n")]).content_hash()


def test_select_keeps_the_labelled_neutral_baseline():
    from emoreg.vectors.labelled import LabelledText

    corpus = Corpus([Story("happy", "t", "x"), Story("sad", "t", "y")], [NeutralText("n")]).with_labelled(
        [LabelledText("happy", "a"), LabelledText("sad", "b"), LabelledText("neutral", "c")])
    assert corpus.emotions == ["happy", "sad"]  # the baseline is not an emotion
    picked = corpus.select(["happy"])
    assert [t.emotion for t in picked.labelled] == ["happy", "neutral"]
