"""Strict configs: defaults, YAML, overrides, and one clear message per mistake."""

import re

import pytest
import yaml

from sdft.config import Config, config_to_dict, load_config
from sdft.errors import UserError
from sdft.claim import claim_new
from sdft.runs import write_run_header


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_are_valid_and_yaml_and_overrides_apply_in_order(tmp_path):
    assert load_config().train.learning_rate == Config().train.learning_rate
    path = write(tmp_path, "train:\n  learning_rate: 1e-5\n  steps: 7\nmodel: {dtype: bfloat16}\n")
    cfg = load_config(path, ["train.steps=9", "tasks=[tools, science]"])
    assert cfg.train.learning_rate == 1e-5  # '1e-5' is a string to PyYAML; a float field accepts it
    assert cfg.train.steps == 9
    assert cfg.model.dtype == "bfloat16"
    assert cfg.tasks == ["tools", "science"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("trian: {steps: 3}\n", r"c.yaml: unknown key 'trian' \(did you mean 'train'\?\)"),
        ("train: {setps: 3}\n", r"unknown key 'train.setps' \(did you mean 'train.steps'\?\)"),
        ("train: {steps: many}\n", r"'train.steps' must be an integer, got 'many'"),
        ("train: {teacher: moving}\n", r"'train.teacher' must be one of 'frozen', 'ema', 'live'"),
        ("model: fast\n", r"'model' must be a mapping"),
        ("tasks: science\n", r"'tasks' must be a list"),
        ("- a\n- b\n", r"top level must be a mapping"),
        ("train: [\n", r"not valid YAML"),
    ],
)
def test_bad_yaml_names_file_and_key(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        load_config(write(tmp_path, text))


def test_missing_file():
    with pytest.raises(UserError, match="config file 'nope.yaml' not found"):
        load_config("nope.yaml")


@pytest.mark.parametrize(
    "override, message",
    [
        ("eval.samples=4", "needs eval.sampling.temperature > 0"),
        ("train.gradient_accumulation=3", "divisible by train.gradient_accumulation"),
        ("tasks=[]", "at least one task"),
        ("tasks=[a, a]", "lists a task twice"),
        ("train.lr=1", "unknown key 'train.lr'"),
        ("train.learning_rat=1", "did you mean 'train.learning_rate'"),
        ("train.steps", "expected KEY=VALUE"),
    ],
)
def test_contradictions_and_bad_overrides_fail_before_any_model_loads(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [override])


def test_resolved_config_in_run_folder_holds_every_default(tmp_path):
    cfg = load_config(None, ["train.steps=5"])
    run_dir = claim_new(tmp_path / "run", "eval", cfg).run_dir
    write_run_header(run_dir, cfg, "eval", "cpu")
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written == config_to_dict(cfg)
    assert written["train"]["steps"] == 5 and written["train"]["ema_rate"] == 0.01
    assert load_config(run_dir / "config.yaml") == cfg  # a resolved config loads back to the same config
    env = (run_dir / "env.json").read_text()
    assert '"torch"' in env and '"seed": 0' in env


def test_the_config_imports_no_torch():
    """`sdft --help` and every config error stay fast: the knobs import no torch (nor transformers)."""
    import subprocess
    import sys

    code = "import sys, sdft.config; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_a_renamed_key_names_its_new_home():
    for old, new in [("eval.generation.temperature=0.5", "eval.sampling.temperature"),
                     ("eval.generation.batch_size=4", "eval.batch_size"), ("lora.ema=update", "train.lora_ema"),
                     ("train.rollout_top_p=0.9", "train.rollout.top_p")]:
        with pytest.raises(UserError, match=f"was renamed: use {re.escape(new)}"):
            load_config(None, [old])


def test_the_default_general_suite_is_the_embedded_prior_skills():
    from sdft.tasks.embedded import PRIOR_SKILLS

    assert load_config().eval.general == list(PRIOR_SKILLS)
