"""Every scorer on right, wrong and malformed responses."""

import pytest

from sdft.errors import UserError
from sdft.scoring import (
    exact_match,
    final_answer,
    get_scorer,
    multiple_choice_letter,
    normalize,
    normalized_match,
    parse_tool_calls,
    tool_call_match,
)


@pytest.mark.parametrize(
    "response, reference, expected",
    [
        ("<reasoning>Fe is iron.</reasoning>\n<answer>B</answer>", "B", 1.0),
        ("<answer> (b) </answer>", "B", 1.0),
        ("<answer>B.</answer>", "<answer>B</answer>", 1.0),
        ("<answer>A</answer> ... <answer>C</answer>", "C", 1.0),  # the last tag counts
        ("<answer>C</answer>", "B", 0.0),
        ("The answer is B", "B", 0.0),  # no tag: malformed, wrong
        ("<answer>Boron</answer>", "B", 0.0),  # not a letter
        ("<answer>B", "B", 0.0),  # unclosed tag
        ("", "B", 0.0),
    ],
)
def test_multiple_choice_letter(response, reference, expected):
    assert multiple_choice_letter(response, reference) == expected


GOLD = 'Action: get_weather\nAction Input: {"city": "Paris", "unit": "C"}'


@pytest.mark.parametrize(
    "response, expected",
    [
        (GOLD, 1.0),
        ('Thought: I need the weather.\nAction: get_weather\nAction Input: {"unit": "C", "city": "Paris"}', 1.0),
        ('Action: get_weather\nAction Input: {"city": "Paris", "unit": "C"}\nObservation: sunny', 1.0),
        ('Action: get_weather\nAction Input: {"city": "Lyon", "unit": "C"}', 0.0),  # wrong argument
        ('Action: get_time\nAction Input: {"city": "Paris", "unit": "C"}', 0.0),  # wrong action
        ('Action: get_weather\nAction Input: {"city": "Paris"}', 0.0),  # missing argument
        ('Action: get_weather\nAction Input: {"city": "Paris", "unit": "C"', 0.0),  # malformed JSON
        ('Action: get_weather\nAction Input: ["Paris"]', 0.0),  # not an object
        ("Action: get_weather", 0.0),  # no input at all
        ("I don't know.", 0.0),
    ],
)
def test_tool_call_match(response, expected):
    assert tool_call_match(response, GOLD) == expected


def test_tool_call_multiset_and_merged_inputs():
    gold = '[{"action": "a", "input": {"x": 1}}, {"action": "b", "input": {"y": 2}}]'
    in_other_order = 'Action: b\nAction Input: {"y": 2}\nAction: a\nAction Input: {"x": 1}'
    assert tool_call_match(in_other_order, gold) == 1.0
    assert tool_call_match('Action: a\nAction Input: {"x": 1, "y": 2}', gold) == 0.0  # one call, not two
    assert tool_call_match('Action: a\nAction Input: {"x": 1}\nAction: a\nAction Input: {"y": 2}', gold) == 0.0
    assert parse_tool_calls("[not json") is None


def test_exact_and_normalized():
    assert exact_match("  Paris \n", "Paris") == 1.0
    assert exact_match("paris", "Paris") == 0.0
    assert normalize("The  Common-Cold!") == "commoncold"
    assert normalized_match("Fever and cough.\nDiagnosis: The Flu.", "flu") == 1.0
    assert normalized_match("Diagnosis: measles", "flu") == 0.0
    assert normalized_match("<answer>Flu</answer>", "flu") == 1.0
    assert normalized_match("", "") == 0.0  # an empty reference never matches
    assert final_answer("no marker here") == "no marker here"


def test_unknown_scorer_has_a_hint():
    with pytest.raises(UserError, match="did you mean 'tool_call'"):
        get_scorer("tool_cal")
