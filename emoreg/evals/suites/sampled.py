"""The shared part of suites whose replies are sampled several times per item (misalignment, blackmail)."""

from __future__ import annotations

from typing import ClassVar

from emoreg.evals.suites.base import EvalContext, Suite
from emoreg.models.generation import ReplyGenerationConfig


class SampledSuite(Suite):
    """A suite that samples ``samples`` replies per item at ``temperature``/``top_p``.

    ``max_new_tokens`` is the suite's reply length; the context's ``generation.max_new_tokens`` caps it
    (``None``: the cap itself).
    """

    #: What the replies are called in error messages ("replies", "answers").
    sampled_noun: ClassVar[str] = "replies"

    def __init__(self, samples: int = 2, max_new_tokens: int | None = None, temperature: float = 1.0,
                 top_p: float = 1.0) -> None:
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive ({self.sampled_noun} are sampled), got {temperature}")
        self.samples = samples
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p

    def generation_settings(self, ctx: EvalContext) -> ReplyGenerationConfig:
        """Sampling settings for the replies (the context's ``max_new_tokens`` caps this suite's)."""
        cap = ctx.generation.max_new_tokens
        tokens = cap if self.max_new_tokens is None else min(cap, self.max_new_tokens)
        return ReplyGenerationConfig(max_new_tokens=tokens, do_sample=True, temperature=self.temperature,
                                  top_p=self.top_p)
