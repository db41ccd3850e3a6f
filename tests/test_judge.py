"""The LLM judge against a local OpenAI-compatible endpoint on 127.0.0.1: verdicts, malformed replies,
timeouts, 429 then success, the disk cache, and a key that never leaks."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sdft.errors import UserError
from sdft.judge import KNOWLEDGE, MEDICAL, JudgeConfig, judge_problem, make_judge, parse_verdict

SECRET = "sk-test-0123456789-SECRET"
ITEM = ("What is the antidote for acetaminophen overdose?", "N-acetylcysteine",
        "Give N-acetylcysteine as early as possible.")


class Endpoint:
    """Plays /v1/chat/completions. `script` is a list of steps, one per request (the last one repeats):
    ("reply", text) | ("status", code) | ("slow", seconds, text) | ("body", raw bytes)."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                step = endpoint.script[min(len(endpoint.requests), len(endpoint.script)) - 1]
                if step[0] == "slow":
                    time.sleep(step[1])
                    step = ("reply", step[2])
                if step[0] == "status":
                    echo = json.dumps({"error": {"message": f"bad key {self.headers.get('Authorization')}"}}).encode()
                    self._send(step[1], echo, {"Location": f"{endpoint.url}/elsewhere"} if step[1] == 302 else {})
                elif step[0] == "body":
                    self._send(200, step[1])
                else:
                    reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": step[1]}}]}
                    self._send(200, json.dumps(reply).encode())

            def do_GET(self):  # only a followed redirect would come here
                endpoint.requests.append({"path": self.path, "headers": dict(self.headers), "body": None})
                self._send(200, b"{}")

            def _send(self, code, payload, headers=None):
                try:
                    self.send_response(code)
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    made = []

    def start(*script):
        made.append(Endpoint(script))
        return made[-1]

    yield start
    for e in made:
        e.close()


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("SDFT_TEST_JUDGE_KEY", SECRET)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # a proxy set in the environment must not carry the test calls
    monkeypatch.setenv("no_proxy", "127.0.0.1")


def judge(url, tmp_path, **overrides):
    settings = dict(backend="openai", url=url, model="judge-model", api_key_env="SDFT_TEST_JUDGE_KEY",
                    timeout_s=0.5, max_retries=3, backoff_s=0.01, concurrency=2)
    cfg = JudgeConfig(**{**settings, **overrides})
    return make_judge(cfg, tmp_path / "cache")


def test_correct_verdict_and_the_request_sent(endpoint, tmp_path):
    e = endpoint(("reply", "CORRECT"))
    (grade,) = judge(e.url, tmp_path).grade_many("medical", [ITEM])
    assert (grade.verdict, grade.metrics) == ("CORRECT", {"score": 1.0})
    (request,) = e.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert request["body"]["model"] == "judge-model" and request["body"]["temperature"] == 0
    prompt = request["body"]["messages"][0]["content"]
    assert all(part in prompt for part in ITEM) and "CORRECT or INCORRECT" in prompt


def test_incorrect_is_not_read_as_correct(endpoint, tmp_path):
    e = endpoint(("reply", "INCORRECT."))
    grades = judge(e.url, tmp_path).grade_many("medical", [ITEM, ITEM])
    assert [(g.verdict, g.metrics["score"]) for g in grades] == [("INCORRECT", 0.0)] * 2
    assert len(e.requests) == 1  # the same prompt twice in a batch is asked once


def test_malformed_reply_scores_zero_is_counted_and_not_cached(endpoint, tmp_path):
    e = endpoint(("reply", "The answer looks plausible."))
    j = judge(e.url, tmp_path)
    assert j.grade_many("medical", [ITEM])[0].verdict is None
    assert j.grade_many("medical", [ITEM])[0].metrics == {"score": 0.0}
    assert (j.malformed, len(e.requests)) == (2, 2)  # asked again: a malformed verdict is never cached


def test_a_reply_that_is_not_a_chat_completion_is_retried(endpoint, tmp_path):
    e = endpoint(("body", b"<html>bad gateway</html>"), ("reply", "CORRECT"))
    assert judge(e.url, tmp_path).grade_many("medical", [ITEM])[0].verdict == "CORRECT"
    assert len(e.requests) == 2


def test_timeout_is_retried(endpoint, tmp_path):
    e = endpoint(("slow", 1.0, "CORRECT"), ("reply", "INCORRECT"))
    started = time.perf_counter()
    (grade,) = judge(e.url, tmp_path, timeout_s=0.2).grade_many("medical", [ITEM])
    assert grade.verdict == "INCORRECT" and len(e.requests) == 2
    assert time.perf_counter() - started < 1.0  # the slow reply was abandoned, not awaited


def test_429_then_success_backs_off_and_retries(endpoint, tmp_path):
    e = endpoint(("status", 429), ("status", 503), ("reply", "CORRECT"))
    (grade,) = judge(e.url, tmp_path).grade_many("medical", [ITEM])
    assert grade.verdict == "CORRECT" and len(e.requests) == 3


def test_429_forever_gives_up_after_the_retries_with_one_line(endpoint, tmp_path):
    e = endpoint(("status", 429))
    with pytest.raises(UserError, match="no answer after 4 attempts") as err:
        judge(e.url, tmp_path).grade_many("medical", [ITEM])
    assert len(e.requests) == 4 and SECRET not in str(err.value)


def test_second_call_is_a_cache_hit_across_judges(endpoint, tmp_path):
    e = endpoint(("reply", "CORRECT"))
    first = judge(e.url, tmp_path)
    first.grade_many("medical", [ITEM])
    again = judge(e.url, tmp_path)  # a new process reading the same cache folder
    (grade,) = again.grade_many("medical", [ITEM])
    assert grade.verdict == "CORRECT"
    assert (len(e.requests), again.calls, again.cache_hits) == (1, 0, 1)
    other_model = judge(e.url, tmp_path, model="another-judge")  # the cache is keyed by the judge model
    other_model.grade_many("medical", [ITEM])
    assert len(e.requests) == 2


def test_the_key_never_reaches_errors_or_the_cache(endpoint, tmp_path):
    e = endpoint(("status", 401))  # its body echoes the Authorization header, as some servers do
    with pytest.raises(UserError, match="HTTP 401") as err:
        judge(e.url, tmp_path).grade_many("medical", [ITEM])
    assert SECRET not in str(err.value) and "***" in str(err.value)
    ok = endpoint(("reply", "CORRECT"))
    judge(ok.url, tmp_path).grade_many("medical", [ITEM])
    assert all(SECRET not in f.read_text() for f in (tmp_path / "cache").iterdir())


def test_missing_settings_name_what_to_set_and_never_the_key(monkeypatch):
    assert "no judge is configured" in judge_problem(JudgeConfig())
    monkeypatch.delenv("SDFT_JUDGE_URL", raising=False)
    assert "eval.judge.url" in judge_problem(JudgeConfig(backend="openai", model="m"))
    problem = judge_problem(JudgeConfig(backend="openai", url="http://127.0.0.1:9/v1", model="m", api_key_env="NOPE_KEY"))
    assert "NOPE_KEY" in problem
    monkeypatch.setenv("SDFT_JUDGE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("SDFT_JUDGE_MODEL", "m")
    assert judge_problem(JudgeConfig(backend="openai", api_key_env=None)) is None


@pytest.mark.parametrize("reply, verdict", [
    ("CORRECT", "CORRECT"), ("correct.", "CORRECT"), ("**INCORRECT**", "INCORRECT"),
    ("Verdict: INCORRECT", "INCORRECT"), ("CORRECT or INCORRECT", None), ("", None), ("INCORRECTLY", None),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply, MEDICAL) == verdict


def test_knowledge_rubric_grades_strict_and_lenient(endpoint, tmp_path):
    e = endpoint(("reply", "PARTIAL"))
    (grade,) = judge(e.url, tmp_path).grade_many("knowledge", [ITEM])
    assert grade.metrics == {"score": 0.0, "lenient": 1.0}
    assert parse_verdict("partial", KNOWLEDGE) == "PARTIAL"


def test_local_backend_runs_a_transformers_model(tiny_model_dir, tmp_path):
    cfg = JudgeConfig(backend="local", model=str(tiny_model_dir), max_tokens=4)
    j = make_judge(cfg, tmp_path / "cache", device="cpu")
    replies = j.backend.complete_many(["Reply CORRECT.", "Reply INCORRECT."])
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert j.identity == f"local:{tiny_model_dir}"


def test_sdft_eval_grades_a_judged_task_through_the_endpoint(endpoint, tmp_path, tiny_model_dir):
    from pathlib import Path

    from typer.testing import CliRunner

    from sdft.cli import app

    e = endpoint(("reply", "PARTIAL"))
    knowledge = Path(__file__).parent / "fixtures" / "paper" / "knowledge"
    args = ["eval", str(tiny_model_dir), "--tasks", "knowledge", "--output", str(tmp_path / "run")]
    for override in (f"task_sources.knowledge={{source: local, path: {knowledge}}}", "eval.general=[]",
                     "eval.max_new_tokens=4", "eval.batch_size=4", "model.device=cpu",
                     "eval.judge={backend: openai, url: " + e.url + ", model: judge-model, "
                     "api_key_env: SDFT_TEST_JUDGE_KEY, backoff_s: 0.01}"):
        args += ["--set", override]
    result = CliRunner().invoke(app, args, prog_name="sdft")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    scores = results["scores"]["knowledge"]
    assert (scores["accuracy"], scores["lenient_accuracy"], scores["n"], results["world"]) == (0.0, 1.0, 2, "paper")
    assert len(e.requests) == 2 and SECRET not in (tmp_path / "run" / "config.yaml").read_text()
    samples = (tmp_path / "run" / "samples" / "knowledge.jsonl").read_text()
    assert '"verdict": "PARTIAL"' in samples and SECRET not in samples


def test_a_redirect_is_not_followed(endpoint, tmp_path):
    e = endpoint(("status", 302), ("reply", "CORRECT"))  # Location: the same server, another path
    with pytest.raises(UserError, match="HTTP 302"):
        judge(e.url, tmp_path).grade_many("medical", [ITEM])
    assert [r["path"] for r in e.requests] == ["/v1/chat/completions"]
