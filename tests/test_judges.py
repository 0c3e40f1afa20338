"""make_judge: judge specs to judge objects."""

from __future__ import annotations

import pytest

from emoreg.errors import ConfigError
from emoreg.evals.judges import JudgeError, make_judge
from emoreg.evals.judges.hf import HFJudge
from emoreg.evals.judges.openai_compat import OpenAICompatibleJudge
from emoreg.evals.judges.rule import RuleJudge


def test_rule_spec():
    judge = make_judge("rule")
    assert isinstance(judge, RuleJudge) and judge.name == "rule"
    assert isinstance(make_judge(" Rule "), RuleJudge)


def test_openai_spec_reads_the_environment(monkeypatch):
    monkeypatch.setenv("EMOREG_JUDGE_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://other.invalid/v1")
    judge = make_judge("openai:gpt-test")
    assert isinstance(judge, OpenAICompatibleJudge)
    assert judge.name == "openai:gpt-test" and judge.url == "http://127.0.0.1:9/v1/chat/completions"


def test_hf_spec_loads_a_model_directory(tmp_path, tiny_llama, tiny_tokenizer):
    tiny_llama.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    judge = make_judge(f"hf:{tmp_path}")
    assert isinstance(judge, HFJudge) and judge.name == f"hf:{tmp_path}"


@pytest.mark.parametrize("spec", ["", "gpt4", "hf:", "openai:", "rule:x", "anthropic:claude"])
def test_bad_specs_are_config_errors(spec):
    with pytest.raises(ConfigError, match="judge spec"):
        make_judge(spec)


def test_judge_error_is_exported():
    assert issubclass(JudgeError, RuntimeError)
