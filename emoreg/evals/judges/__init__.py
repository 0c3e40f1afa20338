"""Judges that grade free-form replies, and :func:`make_judge` to build one from a short spec.

Specs: ``"rule"`` (:class:`RuleJudge`, keyword rules, crude), ``"hf:<model dir or hub id>"`` (:class:`HFJudge`,
a local causal LM; ``hf:default`` is the embedded model) and ``"openai:<model name>"``
(:class:`OpenAICompatibleJudge`; base URL from ``$EMOREG_JUDGE_BASE_URL`` or ``$OPENAI_BASE_URL``, key from
``$EMOREG_JUDGE_API_KEY`` or ``$OPENAI_API_KEY``).
"""

from __future__ import annotations

from emoreg.errors import ConfigError
from emoreg.evals.judges.base import TASKS, Judge, Verdict
from emoreg.evals.judges.prompts import DEFAULT_TEMPLATES, JudgeError, parse_reply, render_prompt

JUDGE_SPECS = ("rule", "hf:<model dir or hub id>", "openai:<model name>")


def make_judge(spec: str) -> Judge:
    """Build the judge named by ``spec`` (see the module docstring); a bad spec raises :class:`ConfigError`."""
    if not isinstance(spec, str):
        raise ConfigError(f"judge spec must be a string such as {' / '.join(JUDGE_SPECS)}; got {spec!r}")
    text = spec.strip()
    kind, _, argument = text.partition(":")
    kind = kind.strip().lower()
    argument = argument.strip()
    if kind == "rule" and not argument:
        from emoreg.evals.judges.rule import RuleJudge

        return RuleJudge()
    if kind in ("hf", "openai"):
        if not argument:
            raise ConfigError(f"judge spec {spec!r} names no model; expected {kind}:<model>")
        if kind == "hf":
            from emoreg.evals.judges.hf import HFJudge

            return HFJudge(argument)
        from emoreg.evals.judges.openai_compat import OpenAICompatibleJudge

        return OpenAICompatibleJudge(argument)
    raise ConfigError(f"unknown judge spec {spec!r}; expected one of: {', '.join(JUDGE_SPECS)}")


def __getattr__(name: str):
    """Lazy access to the judge classes (the HF judge pulls in model loading)."""
    if name == "RuleJudge":
        from emoreg.evals.judges.rule import RuleJudge

        return RuleJudge
    if name == "HFJudge":
        from emoreg.evals.judges.hf import HFJudge

        return HFJudge
    if name == "OpenAICompatibleJudge":
        from emoreg.evals.judges.openai_compat import OpenAICompatibleJudge

        return OpenAICompatibleJudge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_TEMPLATES",
    "JUDGE_SPECS",
    "TASKS",
    "HFJudge",
    "Judge",
    "JudgeError",
    "OpenAICompatibleJudge",
    "RuleJudge",
    "Verdict",
    "make_judge",
    "parse_reply",
    "render_prompt",
]
