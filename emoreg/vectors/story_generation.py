"""Have a model write its own emotion stories (as Anthropic did with Claude).

Useful for models capable enough to follow the brief; a small model writes
poor stories, so check a sample by hand. Stories that name their emotion (by
the banned-word list when there is one, else the emotion word and its simple
inflections) or are too short are rejected and retried.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from emoreg.errors import ConfigError
from emoreg.vectors.corpus import Story, banned_words_in, words

logger = logging.getLogger(__name__)

PROMPT = (
    "Write a one-paragraph story of about {words} words about {topic}, in which the main character "
    "feels {emotion}. Show the feeling through what happens, what the character does, thinks and says. "
    "Never use the word \"{emotion}\" or any synonym of it. Write only the story."
)


@dataclass
class GenerationReport:
    stories: list[Story]
    attempts: int
    rejected_banned: int
    rejected_short: int


def default_banned(emotion: str) -> list[str]:
    """The emotion word and simple inflections, for emotions without a curated list."""
    stem = emotion.rstrip("e")
    return [emotion, f"{emotion}s", f"{emotion}ly", f"{stem}ed", f"{stem}ing", f"{emotion}ness", f"{stem}ity"]


def write_stories(
    model: nn.Module,
    tokenizer,
    emotions: Sequence[str],
    topics: Sequence[str],
    *,
    per_topic: int = 2,
    banned: dict[str, list[str]] | None = None,
    target_words: int = 80,
    min_words: int = 30,
    max_new_tokens: int = 200,
    max_attempts: int = 3,
    temperature: float = 0.8,
    seed: int = 0,
    progress: bool = True,
) -> GenerationReport:
    """Generate ``per_topic`` stories per (emotion, topic), rejecting ones that name the emotion."""
    if per_topic < 1 or max_attempts < 1:
        raise ConfigError("per_topic and max_attempts must be >= 1")
    if not emotions or not topics:
        raise ConfigError("write_stories needs at least one emotion and one topic")
    banned = banned or {}
    device = next(model.parameters()).device
    generator_seed = torch.Generator().manual_seed(seed)
    stories: list[Story] = []
    attempts = rejected_banned = rejected_short = 0
    bar = tqdm(total=len(emotions) * len(topics) * per_topic, desc="emoreg write-stories", disable=not progress)
    for emotion in emotions:
        forbidden = banned.get(emotion) or default_banned(emotion)
        for topic in topics:
            for _ in range(per_topic):
                for _attempt in range(max_attempts):
                    attempts += 1
                    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator_seed)))
                    text = _generate(model, tokenizer, PROMPT.format(words=target_words, topic=topic, emotion=emotion),
                                     device, max_new_tokens, temperature)
                    if banned_words_in(text, forbidden):
                        rejected_banned += 1
                        continue
                    if len(words(text)) < min_words:
                        rejected_short += 1
                        continue
                    stories.append(Story(emotion=emotion, topic=topic, text=text))
                    break
                bar.update(1)
    bar.close()
    return GenerationReport(stories, attempts, rejected_banned, rejected_short)


@torch.no_grad()
def _generate(model, tokenizer, prompt: str, device, max_new_tokens: int, temperature: float) -> str:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        input_ids, attention = ids["input_ids"], ids["attention_mask"]
    else:
        encoded = tokenizer(prompt + "\n\n", return_tensors="pt")
        input_ids, attention = encoded["input_ids"], encoded["attention_mask"]
    output = model.generate(
        input_ids=input_ids.to(device), attention_mask=attention.to(device), max_new_tokens=max_new_tokens,
        do_sample=True, temperature=temperature, top_p=0.95, pad_token_id=tokenizer.pad_token_id,
    )
    text = tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True)
    return " ".join(text.split())
