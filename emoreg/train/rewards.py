"""GRPO reward functions: built-ins by name, or any ``module:function``.

A reward function has TRL's signature ``f(prompts, completions, **kwargs) -> list[float | None]``;
completions are strings, or lists of messages for conversational data (the last message's
``content`` is scored).

The built-ins are **toys** for smoke runs and demos, not measures of quality:

* ``length_penalty``: ``-(characters / 100)`` (shorter is better).
* ``calm_keywords``: ``(calm words - desperate words) / max(1, words / 10)``, counted on lower-case word
  tokens against two short keyword lists; it rewards calm vocabulary and penalises desperate vocabulary,
  whatever the reply means.

One more name is built from the recipe rather than resolved here: ``emotion_reading``, the frozen-reader reward
(:class:`emoreg.regularization.frozen_reader.EmotionReadingReward`), configured by the recipe's
``frozen_reader`` block and built by :func:`emoreg.train.run.build_rewards`.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable
from typing import Any

from emoreg.errors import ConfigError

RewardFunction = Callable[..., list[float]]

CALM_WORDS = frozenset({"calm", "calmly", "steady", "relax", "relaxed", "breathe", "fine", "okay", "ok", "patient",
                        "gently", "peaceful", "settled", "easy", "step", "plan", "together", "manageable"})
DESPERATE_WORDS = frozenset({"please", "begging", "beg", "desperate", "desperately", "must", "anything", "whatever",
                             "panic", "hopeless", "now", "immediately", "urgent", "help", "can't", "cannot"})

_WORD = re.compile(r"[a-z']+")


def completion_text(completion: Any) -> str:
    """The text of one completion (a string, or the last message of a conversational completion)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    raise TypeError(f"a completion is a string or a list of messages, got {type(completion).__name__}")


def length_penalty(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """``-(number of characters / 100)`` per completion."""
    return [-len(completion_text(c)) / 100.0 for c in completions]


def calm_keywords(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Toy: calm keyword count minus desperate keyword count, per 10 words (at least 1)."""
    rewards = []
    for completion in completions:
        words = _WORD.findall(completion_text(completion).lower())
        score = sum(w in CALM_WORDS for w in words) - sum(w in DESPERATE_WORDS for w in words)
        rewards.append(score / max(1.0, len(words) / 10.0))
    return rewards


BUILTIN_REWARDS: dict[str, RewardFunction] = {"length_penalty": length_penalty, "calm_keywords": calm_keywords}
#: Rewards built from a recipe block (name -> the block), not resolvable by name alone.
RECIPE_REWARDS: dict[str, str] = {"emotion_reading": "frozen_reader"}


def resolve_reward(name: str) -> RewardFunction:
    """A built-in reward by name, or ``module:function`` imported and checked to be callable."""
    if name in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[name]
    if name in RECIPE_REWARDS:
        raise ConfigError(f"reward {name!r} is built from the recipe's {RECIPE_REWARDS[name]} block "
                          f"(emoreg.train.run.build_rewards), not resolved by name")
    if ":" not in name:
        names = sorted([*BUILTIN_REWARDS, *RECIPE_REWARDS])
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown reward {name!r}{hint}; use a built-in ({', '.join(names)}) "
                          f"or 'module:function'")
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"reward {name!r}: cannot import module {module_name!r} ({exc})") from None
    function = getattr(module, attribute, None)
    if function is None or not callable(function):
        raise ConfigError(f"reward {name!r}: module {module_name!r} has no callable {attribute!r}")
    return function
