"""A judge backed by a local Hugging Face causal LM.

The task's prompt (the built-in template, or ``prompt_template``) is sent as one user message rendered with the
judge model's chat template, a short answer is generated greedily, and the answer is parsed with
:func:`emoreg.evals.judges.prompts.parse_reply` (a number 0-100, CODE/REFUSAL, yes/no; else ``"unparsable"``).
A prompt that does not fit the judge model's context raises :class:`JudgeError` instead of being truncated
(truncating would cut the instructions or the reply being judged).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from emoreg.evals.judges.base import Judge, Verdict
from emoreg.evals.judges.prompts import JudgeError, parse_reply, render_prompt
from emoreg.models.generation import (
    ReplyGenerationConfig,
    generate_replies,
    render_conversation,
)
from emoreg.models.layout import model_context_length


def _model_name(model: nn.Module) -> str:
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return name or type(model).__name__


class HFJudge(Judge):
    """Judge with a local causal LM.

    Args:
        model_or_path: a loaded model (then ``tokenizer`` is required), or anything
            :func:`emoreg.models.loading.load_model_and_tokenizer` accepts (``"default"``, a directory, a hub id
            in the local cache, a ``.gguf`` file).
        tokenizer: the tokenizer of a loaded model.
        max_new_tokens: length of the judge's answer (a number or a word needs few tokens).
        system_prompt: an optional system message sent before the task prompt.
        name: the judge's name (default ``"hf:<model path or name>"``).
        dtype, device: used when loading from a path.
    """

    def __init__(self, model_or_path: str | Path | nn.Module, tokenizer: Any = None, *, max_new_tokens: int = 8,
                 system_prompt: str | None = None, name: str | None = None, dtype: str = "float32",
                 device: str = "cpu") -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if isinstance(model_or_path, nn.Module):
            if tokenizer is None:
                raise ValueError("HFJudge: a loaded judge model needs its tokenizer (tokenizer=...)")
            self.model, self.tokenizer = model_or_path, tokenizer
            label = _model_name(model_or_path)
        elif isinstance(model_or_path, (str, Path)):
            from emoreg.models.loading import load_model_and_tokenizer

            self.model, loaded_tokenizer = load_model_and_tokenizer(str(model_or_path), dtype=dtype, device=device)
            self.tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
            label = str(model_or_path)
        else:
            raise TypeError(f"HFJudge: expected a model or a model path, got {type(model_or_path).__name__}")
        self.name = name or f"hf:{label}"
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return messages + [{"role": "user", "content": prompt}]

    def judge(self, task: str, fields: dict[str, str], *, prompt_template: str | None = None) -> Verdict:
        prompt = render_prompt(task, fields, prompt_template)
        messages = self._messages(prompt)
        context = model_context_length(self.model, self.tokenizer)
        if context is not None:
            rendered = render_conversation(self.tokenizer, messages)
            n_tokens = len(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])
            if n_tokens + self.max_new_tokens > context:
                raise JudgeError(f"{self.name}: the {task!r} judge prompt is {n_tokens} tokens + {self.max_new_tokens} "
                                 f"answer tokens, more than the judge model's context of {context} tokens; use a "
                                 f"judge with a longer context or shorter replies")
        settings = ReplyGenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False)
        reply = generate_replies(self.model, self.tokenizer, [messages], settings, batch_size=1)[0]
        score, label = parse_reply(task, reply)
        return Verdict(judge=self.name, score=score, label=label, raw=reply, details={"task": task})

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "max_new_tokens": self.max_new_tokens, "system_prompt": self.system_prompt}


__all__ = ["HFJudge"]
