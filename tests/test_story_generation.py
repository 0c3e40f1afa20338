import pytest

from emoreg.errors import ConfigError
from emoreg.vectors import story_generation
from emoreg.vectors.story_generation import default_banned, write_stories


def test_real_generation_runs_on_a_tiny_model(tiny_llama, tiny_tokenizer):
    report = write_stories(tiny_llama, tiny_tokenizer, ["smug"], ["work"], per_topic=1, min_words=0,
                           max_new_tokens=8, progress=False)
    assert report.attempts >= 1
    assert all(story.emotion == "smug" and story.topic == "work" for story in report.stories)


def test_stories_naming_their_emotion_or_too_short_are_retried(monkeypatch, tiny_llama, tiny_tokenizer):
    outputs = iter([
        "She felt so smug about it, " + "word " * 40,  # names the emotion: rejected
        "too short",  # too short: rejected
        "He leaned back and let the others see the trophy gleam. " * 5,  # kept
    ])
    monkeypatch.setattr(story_generation, "_generate", lambda *args, **kwargs: next(outputs))
    report = write_stories(tiny_llama, tiny_tokenizer, ["smug"], ["work"], per_topic=1, progress=False)
    assert report.attempts == 3 and report.rejected_banned == 1 and report.rejected_short == 1
    assert len(report.stories) == 1 and report.stories[0].text.startswith("He leaned back")


def test_prompt_names_emotion_and_topic(monkeypatch, tiny_llama, tiny_tokenizer):
    prompts = []

    def fake(model, tokenizer, prompt, *args):
        prompts.append(prompt)
        return "calm words " * 30

    monkeypatch.setattr(story_generation, "_generate", fake)
    write_stories(tiny_llama, tiny_tokenizer, ["wistful"], ["garden"], per_topic=2, progress=False)
    assert len(prompts) == 2 and "wistful" in prompts[0] and "garden" in prompts[0]


def test_default_banned_forms():
    assert {"smug", "smugly", "smugness"} <= set(default_banned("smug"))


def test_bad_arguments(tiny_llama, tiny_tokenizer):
    with pytest.raises(ConfigError):
        write_stories(tiny_llama, tiny_tokenizer, [], ["work"], progress=False)
