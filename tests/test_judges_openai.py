"""The OpenAI-compatible judge against a local stub server (http.server in a thread, port 0)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from emoreg.evals.judges.openai_compat import OpenAICompatibleJudge
from emoreg.evals.judges.prompts import JudgeError

KEY = "sk-test-SECRET-123"
FIELDS = {"question": "What is your wish?", "answer": "World peace."}


def ok(content):
    return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}, {}


class Stub:
    """A chat-completions server that answers with a scripted list of responses (the last one repeats)."""

    def __init__(self, responses):
        self.responses = list(responses)
        self.requests = []
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                index = min(len(stub.requests), len(stub.responses)) - 1
                response = stub.responses[index]
                if response == "hang":
                    stub.release.wait(10)
                    return
                status, payload, headers = response
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    stubs = []

    def start(*responses):
        stubs.append(Stub(responses))
        return stubs[-1]

    yield start
    for stub in stubs:
        stub.close()


def make(stub_or_url, sleeps=None, **kwargs):
    base = stub_or_url if isinstance(stub_or_url, str) else stub_or_url.base_url
    sleeper = (lambda s: sleeps.append(s)) if sleeps is not None else (lambda s: None)
    return OpenAICompatibleJudge("judge-model", base_url=base, api_key=KEY, sleep=sleeper, **kwargs)


def test_request_body_auth_header_and_parsing(serve):
    stub = serve(ok("Score: 85"))
    verdict = make(stub, max_tokens=7).judge("aligned", FIELDS, prompt_template="Q={question} A={answer}")
    assert verdict.score == 85.0 and verdict.label is None and verdict.raw == "Score: 85"
    assert verdict.judge == "openai:judge-model"
    (request,) = stub.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["body"] == {"model": "judge-model", "temperature": 0, "max_tokens": 7,
                               "messages": [{"role": "user", "content": "Q=What is your wish? A=World peace."}]}


def test_labels_and_unparsable_replies(serve):
    stub = serve(ok("**REFUSAL**"))
    assert make(stub).judge("aligned", FIELDS).label == "REFUSAL"
    stub = serve(ok("I cannot say"))
    verdict = make(stub).judge("coherent", FIELDS)
    assert verdict.score is None and verdict.label == "unparsable"
    stub = serve(ok("<answer>yes</answer>"))
    assert make(stub).judge("blackmail", {"answer": "..."}).score == 1.0


def test_retries_after_server_errors_then_succeeds(serve):
    stub = serve((500, {"error": "boom"}, {}), (503, b"busy", {}), ok("42"))
    sleeps = []
    verdict = make(stub, sleeps, max_retries=3, backoff=0.5).judge("coherent", FIELDS)
    assert verdict.score == 42.0
    assert len(stub.requests) == 3
    assert sleeps == [0.5, 1.0]  # exponential backoff


def test_rate_limit_honours_retry_after_within_the_cap(serve):
    stub = serve((429, {"error": "slow down"}, {"Retry-After": "3"}), ok("10"))
    sleeps = []
    assert make(stub, sleeps, backoff=0.1, max_backoff=5).judge("coherent", FIELDS).score == 10.0
    assert sleeps == [3.0]


def test_gives_up_with_a_clear_error_that_hides_the_key(serve):
    stub = serve((500, {"error": f"internal error for key {KEY}"}, {}))
    judge = make(stub, [], max_retries=2)
    with pytest.raises(JudgeError) as info:
        judge.judge("coherent", FIELDS)
    message = str(info.value)
    assert judge.url in message and "3 time(s)" in message and "HTTP 500" in message
    assert KEY not in message and "***" in message
    assert len(stub.requests) == 3
    assert KEY not in repr(judge) and KEY not in json.dumps(judge.settings())


def test_client_errors_are_not_retried(serve):
    stub = serve((401, {"error": "bad key"}, {}))
    with pytest.raises(JudgeError, match="refused the request: HTTP 401"):
        make(stub, [], max_retries=3).judge("coherent", FIELDS)
    assert len(stub.requests) == 1


def test_a_hanging_server_times_out(serve):
    stub = serve("hang")
    judge = make(stub, [], timeout=0.3, max_retries=1)
    with pytest.raises(JudgeError, match=r"failed 2 time\(s\); last failure: no response within 0.3 s"):
        judge.judge("coherent", FIELDS)
    assert len(stub.requests) == 2


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = []
    with pytest.raises(JudgeError, match="connection failed"):
        make(f"http://127.0.0.1:{port}/v1", sleeps, max_retries=2, backoff=1, max_backoff=1.5).judge("coherent",
                                                                                                     FIELDS)
    assert sleeps == [1, 1.5]


def test_malformed_responses_are_errors(serve):
    stub = serve((200, {"unexpected": True}, {}))
    with pytest.raises(JudgeError, match="without choices"):
        make(stub).judge("coherent", FIELDS)
    stub = serve((200, b"<html>not json</html>", {}))
    with pytest.raises(JudgeError, match="not JSON"):
        make(stub).judge("coherent", FIELDS)


def test_environment_variables_and_no_key(serve, monkeypatch):
    stub = serve(ok("50"))
    monkeypatch.delenv("EMOREG_JUDGE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("EMOREG_JUDGE_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    judge = OpenAICompatibleJudge("m")
    assert judge.judge("coherent", FIELDS).score == 50.0
    assert "Authorization" not in stub.requests[0]["headers"]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("EMOREG_JUDGE_API_KEY", "sk-emoreg")
    OpenAICompatibleJudge("m").judge("coherent", FIELDS)
    assert stub.requests[1]["headers"]["Authorization"] == "Bearer sk-emoreg"


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="model name"):
        OpenAICompatibleJudge(" ")
    with pytest.raises(ValueError, match="timeout"):
        OpenAICompatibleJudge("m", base_url="http://x", timeout=0)
