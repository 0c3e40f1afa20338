"""emoreg.textemotion.training: sentence windows from stories, topic folds, held-out-topic validation."""

import pytest
import torch

from emoreg.errors import ConfigError
from emoreg.textemotion.training import (
    LabelledText,
    build_training_texts,
    dialogue_turns,
    leave_topics_out,
    story_windows,
    topic_folds,
    training_labels,
)
from emoreg.vectors.corpus import Corpus, NeutralText, Story


def test_story_windows_cover_each_size_and_the_whole_story():
    text = "One two three four. Five six seven eight. Nine ten eleven twelve. Short one."
    windows = story_windows(text, (1, 3), min_words=3)
    sizes = [size for _, size in windows]
    assert sizes.count(1) == 3  # "Short one." has 2 words and is dropped
    assert sizes.count(3) == 2 and sizes.count(0) == 1
    assert windows[-1] == (text, 0)
    assert ("Five six seven eight. Nine ten eleven twelve. Short one.", 3) in windows
    assert story_windows("Just one sentence here.", (1, 3)) == [("Just one sentence here.", 0)]
    with pytest.raises(ConfigError):
        story_windows(text, (0,))


def tiny_corpus():
    stories = []
    for emotion in ("desperate", "calm"):
        for topic in ("work", "food", "travel"):
            stories.append(Story(emotion, topic, f"A {emotion} day at {topic}. It went on and on. Then it ended well."))
    neutral = [NeutralText("User: How long is a mile?\nAssistant: About 1.6 km. That is 1,609 metres.", "units"),
               NeutralText("User: What is a noun?\nAssistant: A word that names a thing.", "grammar")]
    return Corpus(stories=stories, neutral=neutral)


def test_dialogue_turns_drop_role_prefixes():
    assert dialogue_turns("User: Hi there.\n\nassistant : Hello!\nSystem: be brief") == ["Hi there.", "Hello!",
                                                                                          "be brief"]


def test_build_training_texts_labels_every_window_with_its_source():
    corpus = tiny_corpus()
    texts = build_training_texts(corpus, (1,), min_words=2, neutral=False)
    assert len(texts) == 6 * 4  # three sentences and the whole story per story
    assert {(t.label, t.topic) for t in texts if t.source == 4} == {("calm", "food")}
    assert all(t.text in corpus.stories[t.source].text for t in texts)
    with_neutral = build_training_texts(corpus, (1,), min_words=2)
    neutral = [t for t in with_neutral if t.label == "neutral"]
    # turns: "How long is a mile?" (whole only), "About 1.6 km. That is 1,609 metres." (2 sentences + whole), ...
    assert {t.text for t in neutral} == {"How long is a mile?", "About 1.6 km.", "That is 1,609 metres.",
                                         "About 1.6 km. That is 1,609 metres.", "What is a noun?",
                                         "A word that names a thing."}
    assert {t.topic for t in neutral} == {"neutral:units", "neutral:grammar"}
    assert training_labels(with_neutral) == ["desperate", "calm", "neutral"]


def test_topic_folds_partition_the_topics_deterministically():
    topics = [f"t{i}" for i in range(20)] * 3
    folds = topic_folds(topics, 5, seed=3)
    assert sorted(t for fold in folds for t in fold) == sorted(set(topics))
    assert [len(fold) for fold in folds] == [4] * 5
    assert folds == topic_folds(topics, 5, seed=3) and folds != topic_folds(topics, 5, seed=4)
    with pytest.raises(ConfigError):
        topic_folds(topics, 1)
    with pytest.raises(ConfigError):
        topic_folds(topics, 21)


def synthetic(separable: bool):
    """Texts of 3 emotions on 6 topics; embeddings cluster by emotion when ``separable``, else pure noise."""
    generator = torch.Generator().manual_seed(0)
    emotions = ["calm", "desperate", "happy"]
    centres = torch.eye(3, 16) * 3.0
    texts, rows = [], []
    for topic in range(6):
        for e, emotion in enumerate(emotions):
            for k in range(10):
                texts.append(LabelledText(f"{emotion}{topic}{k}", emotion, f"topic{topic}", len(texts), k % 2))
                noise = torch.randn(16, generator=generator)
                rows.append(noise + (centres[e] if separable else 0))
    return torch.stack(rows), texts


def test_leave_topics_out_separates_clustered_embeddings():
    embeddings, texts = synthetic(True)
    result = leave_topics_out(embeddings, texts, l2=1e-2, folds=3)
    assert result["accuracy"]["all"] > 0.9
    assert set(result["accuracy"]) == {"all", "emotion_texts", "whole", "window_1"}
    assert result["n"]["all"] == len(texts) and result["chance"] == pytest.approx(1 / 3)
    assert result["desperate_vs_calm_auc"] > 0.95


def test_leave_topics_out_is_near_chance_on_noise():
    embeddings, texts = synthetic(False)
    result = leave_topics_out(embeddings, texts, l2=1e-2, folds=3)
    assert result["accuracy"]["all"] < 0.55
    assert 0.2 < result["desperate_vs_calm_auc"] < 0.8


def test_leave_topics_out_folds_neutral_topics_separately():
    embeddings, texts = synthetic(True)
    generator = torch.Generator().manual_seed(1)
    extra = [LabelledText(f"n{i}", "neutral", f"neutral:t{i % 3}", 1000 + i, 0) for i in range(30)]
    rows = torch.randn(30, 16, generator=generator) - 3.0
    result = leave_topics_out(torch.cat([embeddings, rows]), texts + extra, l2=1e-2, folds=3)
    assert result["classes"][-1] == "neutral" and result["chance"] == pytest.approx(1 / 4)
    assert result["n"]["neutral_texts"] == 30 and result["n"]["emotion_texts"] == len(texts)
    assert result["accuracy"]["neutral_texts"] > 0.9


def test_leave_topics_out_rejects_mismatched_inputs():
    embeddings, texts = synthetic(True)
    with pytest.raises(ConfigError, match="embeddings"):
        leave_topics_out(embeddings[:5], texts, l2=1e-2)
