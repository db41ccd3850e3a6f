"""Few-shot data and `sdft ttt` as a user meets them: the three sources load, every bad input is one line and exit 1
before any model loads, the configs dry-run offline, and a run on the tiny model writes the documented results.json
and resumes at the next instance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdft.cli import app
from sdft.config import TTTConfig, load_config
from sdft.errors import UserError
from sdft.tasks.fewshot import load_fewshot_tasks

from conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def instances(n: int, demos: int = 3) -> list[dict]:
    return [{"instruction": "Swap the two words.",
             "demos": [{"input": f"a{j} b{i}", "output": f"b{i} a{j}"} for j in range(demos)],
             "query": {"input": f"w{i} x", "output": f"x w{i}"}} for i in range(n)]


def test_the_three_sources_load_k_shot_rows(tmp_path):
    write_jsonl(tmp_path / "swap.jsonl", instances(4))
    (jsonl,) = load_fewshot_tasks(TTTConfig(source="jsonl", path=str(tmp_path), tasks=[], shots=2), 0)
    assert jsonl.name == "swap" and len(jsonl.rows("test")) == 4 and len(jsonl.rows("test")[0].demos) == 2
    bbh = load_fewshot_tasks(TTTConfig(source="bbh", path=str(ROOT / "tests/fixtures/bbh"), tasks=[], shots=10), 3)
    for task in bbh:
        rows = task.rows("test")
        assert len({r.demos for r in rows}) == 1 and all(r.prompt not in dict(r.demos) for r in rows)
    clinic, science = load_fewshot_tasks(TTTConfig(tasks=["clinic", "science"], shots=4, instances=5), 0)
    assert len(clinic.rows("test")) == 5 and all(len(r.demos) == 4 for r in science.rows("test"))


@pytest.mark.parametrize("setup,message", [
    (lambda p: write_jsonl(p / "t.jsonl", instances(2, demos=2)), "ttt.shots=3 is larger than its 2 demos"),
    (lambda p: write_jsonl(p / "t.jsonl", [{"demos": [], "query": {"input": "x", "output": "y"}}]), "has no demos"),
])
def test_bad_jsonl_instances_are_named(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(UserError, match=message):
        load_fewshot_tasks(TTTConfig(source="jsonl", path=str(tmp_path), tasks=[], shots=3), 0)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], prog_name="sdft")


@pytest.mark.parametrize("overrides,message", [
    (["ttt.source=bbh", "ttt.path=."], "holds no .json task files"),
    (["ttt.augmentations=[mirror]"], "no augmentation 'mirror'"),
    (["ttt.shots=5000", "ttt.tasks=[science]"], "ttt.shots=5000 is larger than its 1600 train rows"),
    (["ttt.predictors=[icl,tt]"], "unknown predictor"),
])
def test_bad_input_is_one_line_and_exit_1_before_the_model_loads(tmp_path, overrides, message):
    sets = [a for o in ["model.name_or_path=/no/such/model", *overrides] for a in ("--set", o)]
    result = invoke("ttt", ROOT / "configs/ttt.yaml", *sets, "--output", tmp_path / "run")
    assert result.exit_code == 1 and message in result.output and "no/such/model" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize("config", ["configs/ttt.yaml", "configs/paper/ttt-bbh.yaml"])
def test_the_configs_start_with_their_command_and_dry_run_offline(config):
    text = (ROOT / config).read_text()
    assert text.startswith(f"# sdft ttt {config}") and "--output" in text.splitlines()[0]
    load_config(ROOT / config)
    result = invoke("ttt", ROOT / config, "--set", f"ttt.path={ROOT / 'tests/fixtures/bbh'}", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "training samples built" in result.output and "world" in result.output


def test_sdft_ttt_on_the_tiny_model_writes_the_comparison_and_resumes(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "data" / "swap.jsonl", instances(2))
    config = tmp_path / "ttt.yaml"
    config.write_text(
        f"model: {{name_or_path: '{tiny_model_dir}'}}\neval: {{max_new_tokens: 4, general: [repeat]}}\n"
        f"ttt: {{source: jsonl, path: '{tmp_path / 'data'}', tasks: [], shots: 3, scope: instance, permutations: 2, "
        "max_samples: 4, batch_size: 2, votes: 2, lora: {enabled: true, r: 2, alpha: 4, target_modules: [q_proj]}}\n")
    result = invoke("ttt", config, "--output", tmp_path / "run", "--set", "eval.limit=3")
    assert result.exit_code == 0, result.output
    report = (tmp_path / "run" / "report.md").read_text()
    assert "TTT + vote" in report and "world: custom" in report and "bit-identical after all instances: yes" in report
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(results["predictors"]) == ["zero_shot", "icl", "ttt", "ttt_vote"]
    assert all(results["predictors"][p]["scores"]["swap"]["n"] == 2 for p in results["predictors"])
    assert set(results["seconds_per_instance"]) == set(results["predictors"]) and results["base_identical"] is True
    assert results["general"]["repeat"] is not None and results["fits"]["adapters"] == 2
    records = sorted((tmp_path / "run" / "records").glob("swap-ttt_vote-*.jsonl"))
    before = records[0].read_text()
    assert invoke("ttt", config, "--output", tmp_path / "run", "--set", "eval.limit=3").exit_code == 0
    assert records[0].read_text() == before  # every instance was done: nothing is answered again


@pytest.mark.slow
def test_embedded_ttt_beats_in_context_on_clinic(tmp_path):
    """configs/ttt.yaml on its first 10 clinic instances (about 2 minutes on 2 cores): TTT beats in-context by at
    least 0.10 (README: 0.35 on 40 instances), and the base weights are bit-identical after."""
    result = invoke("ttt", ROOT / "configs/ttt.yaml", "--output", tmp_path / "run", "--set", "ttt.instances=10",
                    "--set", "ttt.predictors=[icl,ttt]", "--set", "ttt.general=false")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    accuracy = {p: e["scores"]["clinic"]["accuracy"] for p, e in results["predictors"].items()}
    assert accuracy["ttt"] >= accuracy["icl"] + 0.10 and results["base_identical"] and results["world"] == "embedded"
