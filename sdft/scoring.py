"""Pure scorers: (model response, reference answer) -> 1.0 if right, 0.0 if not. A malformed response
is wrong, never an exception.

The judge hook: a scorer named in JUDGED is not a function here but a rubric of sdft.judge; evaluation
grades such a task's responses with the configured LLM judge, which also sees the question."""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from typing import Callable

Scorer = Callable[[str, str], float]

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_FINAL_MARKER = re.compile(r"(?:answer|diagnosis)\s*:\s*(.*)", re.IGNORECASE)
_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.)]?$")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def answer_tag(text: str) -> str | None:
    """The content of the last <answer>...</answer> in text, stripped; None if there is none."""
    found = _ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None


def final_answer(text: str) -> str:
    """The part of a free-text response that states its answer: the last <answer> tag if present, else
    the rest of the line after the last 'Answer:' or 'Diagnosis:', else the whole text."""
    tagged = answer_tag(text)
    if tagged is not None:
        return tagged
    markers = _FINAL_MARKER.findall(text)
    return markers[-1].strip() if markers else text.strip()


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the SQuAD normalisation)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def multiple_choice_letter(prediction: str, answer: str) -> float:
    """Right when the letter inside the response's last <answer> tag equals the reference letter.
    The reference may be the bare letter or a tagged answer; '(B)', 'B)' and 'B.' count as 'B'."""
    predicted = _letter(answer_tag(prediction))
    reference = _letter(answer_tag(answer) if "<answer>" in answer.lower() else answer.strip())
    return float(predicted is not None and predicted == reference)


def answer_letter(text: str) -> str | None:
    """The option letter inside the text's last <answer> tag ('B', '(B)', 'B.' -> 'B'); None if none."""
    return _letter(answer_tag(text))


def _letter(text: str | None) -> str | None:
    match = _LETTER.match(text.strip()) if text is not None else None
    return match.group(1).upper() if match else None


def exact_match(prediction: str, answer: str) -> float:
    """Right when the response equals the reference, ignoring surrounding whitespace."""
    return float(prediction.strip() == answer.strip())


def normalized_match(prediction: str, answer: str) -> float:
    """Right when the response's final answer (see final_answer) equals the reference after normalize()."""
    return float(normalize(final_answer(prediction)) == normalize(answer) != "")


def contained_match(prediction: str, answer: str) -> float:
    """Right when the normalised reference appears, as whole words, in the normalised response (the lenient
    grade of a free-text answer: 'It hit Lima, I think' counts for 'Lima')."""
    reference = normalize(answer)
    return float(reference != "" and f" {reference} " in f" {normalize(prediction)} ")


# --- tool calls (ReAct: "Action: name" then "Action Input: {json}") ---------------------------------

_ACTION = re.compile(r"^\s*Action\s*:\s*(.+?)\s*$", re.MULTILINE)
_ACTION_INPUT = re.compile(r"^\s*Action Input\s*:\s*", re.MULTILINE)


def parse_tool_calls(text: str) -> list[tuple[str, dict]] | None:
    """Every (action name, JSON input object) pair in a ReAct response, or a JSON list of
    {"action": .., "input": {..}}; None when anything is malformed (an action without a JSON object)."""
    stripped = text.strip()
    if stripped.startswith("["):
        return _parse_json_calls(stripped)
    names = _ACTION.findall(text)
    inputs = [_leading_json_object(text[m.end():]) for m in _ACTION_INPUT.finditer(text)]
    if not names or len(names) != len(inputs) or any(i is None for i in inputs):
        return None
    return list(zip(names, inputs))


def _parse_json_calls(text: str) -> list[tuple[str, dict]] | None:
    try:
        calls = json.loads(text)
        return [(str(c["action"]), dict(c["input"])) for c in calls]
    except (ValueError, KeyError, TypeError):
        return None


def _leading_json_object(text: str) -> dict | None:
    try:
        value, _ = json.JSONDecoder().raw_decode(text.lstrip())
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def tool_call_match(prediction: str, answer: str) -> float:
    """Right when the multiset of action names equals the reference's and the action inputs, merged
    into one object, are equal (argument order does not matter). Malformed JSON is wrong."""
    predicted, reference = parse_tool_calls(prediction), parse_tool_calls(answer)
    if predicted is None or reference is None:
        return 0.0
    same_actions = Counter(name for name, _ in predicted) == Counter(name for name, _ in reference)
    return float(same_actions and _merged(predicted) == _merged(reference))


def _merged(calls: list[tuple[str, dict]]) -> dict:
    merged: dict = {}
    for _, arguments in calls:
        merged.update(arguments)
    return merged


SCORERS: dict[str, Scorer] = {
    "multiple_choice": multiple_choice_letter,
    "tool_call": tool_call_match,
    "exact": exact_match,
    "normalized": normalized_match,
    "knowledge": normalized_match,  # strict; its lenient grade is in METRICS
}
METRICS: dict[str, dict[str, Scorer]] = {"knowledge": {"lenient": contained_match}}
"""Scorer name -> further grades recorded beside its score (evaluate.py reports each as `<name>_accuracy`)."""


JUDGED: dict[str, str] = {"judge_medical": "medical", "judge_knowledge": "knowledge"}
"""Scorer name -> the sdft.judge rubric that grades it (needs eval.judge)."""


def is_judged(name: str) -> bool:
    return name in JUDGED


def get_scorer(name: str) -> Scorer:
    """The pure scorer `name`; a judged scorer name has none (see JUDGED)."""
    from sdft.errors import UserError
    from sdft.suggest import did_you_mean

    if name not in SCORERS:
        raise UserError(f"unknown scorer '{name}'{did_you_mean(name, SCORERS)}; known: {', '.join(SCORERS)}")
    return SCORERS[name]
