"""A judge behind an OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp, Ollama...).

Requests use only the standard library (``urllib``): ``POST {base_url}/chat/completions`` with the task prompt as
one user message, ``temperature`` 0 and a small ``max_tokens``. HTTP 429, 5xx, connection errors and timeouts
are retried with exponential backoff (``backoff * 2**attempt`` seconds, capped at ``max_backoff``, or the
server's ``Retry-After`` when it is shorter than the cap); other HTTP errors fail at once. When every attempt
failed, :class:`JudgeError` names the URL, the number of attempts and the last failure. The API key is sent only
in the ``Authorization`` header and never appears in an error, a log line or :meth:`settings`.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from emoreg.evals.judges.base import Judge, Verdict
from emoreg.evals.judges.prompts import JudgeError, parse_reply, render_prompt

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
BASE_URL_VARIABLES = ("EMOREG_JUDGE_BASE_URL", "OPENAI_BASE_URL")
API_KEY_VARIABLES = ("EMOREG_JUDGE_API_KEY", "OPENAI_API_KEY")
_RETRYABLE_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))


def _from_environment(names: tuple[str, ...]) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


class _Retryable(Exception):
    def __init__(self, description: str, retry_after: float | None = None) -> None:
        super().__init__(description)
        self.retry_after = retry_after


class OpenAICompatibleJudge(Judge):
    """Judge with a chat-completions endpoint.

    Args:
        model: the model name sent in the request.
        base_url: the API root (``.../v1``); default ``$EMOREG_JUDGE_BASE_URL``, ``$OPENAI_BASE_URL``, then
            ``https://api.openai.com/v1``.
        api_key: default ``$EMOREG_JUDGE_API_KEY``, then ``$OPENAI_API_KEY``; without one no ``Authorization``
            header is sent (local servers).
        timeout: seconds to wait for each response.
        max_retries: retries after the first attempt (so ``max_retries + 1`` attempts in all).
        backoff, max_backoff: the first retry waits ``backoff`` seconds, doubling up to ``max_backoff``.
        max_tokens: the answer length requested.
        system_prompt: an optional system message sent before the task prompt.
        sleep: the function used to wait (tests pass a fake).
    """

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 4, backoff: float = 1.0, max_backoff: float = 30.0,
                 max_tokens: int = 16, system_prompt: str | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not model or not model.strip():
            raise ValueError("OpenAICompatibleJudge: model name is empty")
        if timeout <= 0 or max_retries < 0 or backoff < 0 or max_backoff < 0 or max_tokens < 1:
            raise ValueError(f"OpenAICompatibleJudge: need timeout > 0, max_retries >= 0, backoff >= 0, "
                             f"max_backoff >= 0, max_tokens >= 1; got timeout={timeout}, max_retries={max_retries}, "
                             f"backoff={backoff}, max_backoff={max_backoff}, max_tokens={max_tokens}")
        self.model = model
        self.base_url = (base_url or _from_environment(BASE_URL_VARIABLES) or DEFAULT_BASE_URL).rstrip("/")
        self._api_key = api_key if api_key is not None else _from_environment(API_KEY_VARIABLES)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_tokens = max_tokens
        self.system_prompt = system_prompt
        self._sleep = sleep
        self.name = f"openai:{model}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatibleJudge(model={self.model!r}, base_url={self.base_url!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def request_body(self, prompt: str) -> dict[str, Any]:
        """The JSON body sent for ``prompt``."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        return {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}

    def _post_once(self, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = self._scrub(exc.read(500).decode("utf-8", "replace").strip())
            description = f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
            if exc.code in _RETRYABLE_STATUS:
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                try:
                    wait = float(retry_after) if retry_after is not None else None
                except ValueError:
                    wait = None
                raise _Retryable(description, wait) from None
            raise JudgeError(f"judge endpoint {self.url} refused the request: {description}") from None
        except TimeoutError as exc:
            raise _Retryable(f"no response within {self.timeout} s ({type(exc).__name__})") from None
        except urllib.error.URLError as exc:
            raise _Retryable(f"connection failed: {self._scrub(str(exc.reason))}") from None
        except (ConnectionError, OSError, http.client.HTTPException) as exc:
            raise _Retryable(f"connection failed: {type(exc).__name__}: {self._scrub(str(exc))}") from None
        try:
            return json.loads(payload)
        except json.JSONDecodeError:
            raise JudgeError(f"judge endpoint {self.url} answered with something that is not JSON: "
                             f"{self._scrub(payload[:200].decode('utf-8', 'replace'))!r}") from None

    def complete(self, prompt: str) -> str:
        """The endpoint's answer to ``prompt`` (with retries); raises :class:`JudgeError` when it gives up."""
        body = json.dumps(self.request_body(prompt)).encode("utf-8")
        attempts = self.max_retries + 1
        last = ""
        for attempt in range(attempts):
            try:
                payload = self._post_once(body)
                break
            except _Retryable as failure:
                last = str(failure)
                if attempt + 1 == attempts:
                    raise JudgeError(f"judge endpoint {self.url} failed {attempts} time(s); last failure: {last}") \
                        from None
                wait = min(self.max_backoff, self.backoff * 2 ** attempt)
                if failure.retry_after is not None:
                    wait = min(self.max_backoff, max(wait, failure.retry_after))
                logger.warning("judge endpoint %s: %s; retry %d/%d in %.1f s", self.url, last, attempt + 1,
                               self.max_retries, wait)
                self._sleep(wait)
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge endpoint {self.url} answered without choices[0].message.content: "
                             f"{self._scrub(json.dumps(payload)[:200])}") from None
        return content if isinstance(content, str) else ""

    def judge(self, task: str, fields: dict[str, str], *, prompt_template: str | None = None) -> Verdict:
        prompt = render_prompt(task, fields, prompt_template)
        reply = self.complete(prompt)
        score, label = parse_reply(task, reply)
        return Verdict(judge=self.name, score=score, label=label, raw=reply, details={"task": task})

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "base_url": self.base_url, "temperature": 0, "max_tokens": self.max_tokens,
                "system_prompt": self.system_prompt}


__all__ = ["API_KEY_VARIABLES", "BASE_URL_VARIABLES", "DEFAULT_BASE_URL", "OpenAICompatibleJudge"]
