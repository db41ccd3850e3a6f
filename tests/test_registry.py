"""The method registry is the one place that knows the methods: the config's names agree with it, every entry can
train, and no other module branches on a method's name."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import sdft
from sdft.config import METHOD_NAMES, SequenceConfig, TrainConfig
from sdft.methods.registry import METHODS

SOURCE = Path(sdft.__file__).parent


def test_the_config_and_the_registry_name_the_same_methods():
    assert set(METHOD_NAMES) == set(METHODS)
    assert set(typing.get_args(typing.get_type_hints(TrainConfig)["method"])) == set(METHODS)
    (chain_methods,) = typing.get_args(typing.get_type_hints(SequenceConfig)["methods"])
    assert set(typing.get_args(chain_methods)) <= set(METHODS)


def test_every_method_trains_natively_and_names_its_unit():
    for name, method in METHODS.items():
        assert method.name == name and "native" in method.trainers and method.unit in ("rows", "corpus blocks", "articles")
    assert set(METHODS["sdft"].trainers) == {"native", "trl"}  # the reference engine exists for sdft only


def test_no_module_outside_the_registry_branches_on_a_method_name():
    names = "|".join(METHODS)
    branch = re.compile(rf"method\s*(==|!=|in)\s*[\(\[]?\s*['\"]({names})['\"]")
    found = [f"{path.relative_to(SOURCE)}:{number}" for path in SOURCE.rglob("*.py")
             if path.name != "registry.py" and "config" not in path.parts
             for number, line in enumerate(path.read_text().splitlines(), start=1) if branch.search(line)]
    assert found == []
