"""`sdft collm`: bad input is one line and exit 1 before any model loads; the dry runs of both shipped configs; a
whole run on tiny models with a sequence stage folder as the expert (results.json's keys, the CSV and PNG), whose
rerun computes nothing; and (slow) the embedded world's one-command table against the issue's target."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import build_tiny_model
from typer.testing import CliRunner

from sdft.cli import app

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], prog_name="sdft")
    return result.exit_code, " ".join(result.output.split())


def sets(*overrides):
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture(scope="module")
def stage_expert(tmp_path_factory) -> Path:
    """A `sdft sequence` stage folder (<run>/<method>/seed-<s>/stage-<k>-<task>/ with its model/) holding a tiny model
    of the same tokenizer as tiny_model_dir, other weights."""
    stage = tmp_path_factory.mktemp("sequence") / "sft" / "seed-0" / "stage-1-doubling"
    build_tiny_model(stage / "model", seed=1)
    (stage / "row.json").write_text("{}")
    return stage


@pytest.fixture
def no_model_loads(monkeypatch):
    import sdft.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(sdft.models, "load_model", refuse)


def _tiny(tiny_model_dir, expert, custom_task_file, *more):
    return sets(f"model.name_or_path={tiny_model_dir}", f"collm.expert={expert}", f"custom_tasks=[{custom_task_file}]",
                "tasks=[doubling]", "eval.general=[]", *more)


@pytest.mark.parametrize("override, message", [
    ("collm.threshold=1.5", "collm.threshold must be in [0, 1]"),
    ("collm.threshold=-0.1", "collm.threshold must be in [0, 1]"),
    ("collm.strategy=mixture", "'collm.strategy' must be one of 'defer', 'compose', got 'mixture'"),
    ("eval.sampling.temperature=0.7", "sdft collm decodes greedily"),
])
def test_bad_settings_are_one_line_before_any_model_loads(override, message, no_model_loads, tiny_model_dir,
                                                          stage_expert, custom_task_file):
    code, out = invoke("collm", CONFIGS / "collm.yaml", *_tiny(tiny_model_dir, stage_expert, custom_task_file),
                       "--set", override)
    assert code == 1 and message in out and "Traceback" not in out, out
    assert not Path("runs").exists()


def test_a_task_without_gold_responses_is_refused(no_model_loads, tiny_model_dir, stage_expert, tmp_path):
    (tmp_path / "test.jsonl").write_text(json.dumps({"prompt": "p", "demonstration": "d", "answer": "a"}) + "\n")
    task = tmp_path / "nogold.yaml"
    task.write_text("name: nogold\nversion: '1'\nscorer: exact\nsplits: {test: test.jsonl}\n")
    code, out = invoke("collm", CONFIGS / "collm.yaml", *sets(f"model.name_or_path={tiny_model_dir}",
                       f"collm.expert={stage_expert}", f"custom_tasks=[{task}]", "tasks=[nogold]", "eval.general=[]"))
    assert code == 1 and "task 'nogold' has no gold responses in split 'train'" in out, out


def test_an_expert_with_another_tokenizer_names_both_models(no_model_loads, tiny_model_dir, custom_task_file, tmp_path):
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<|extra|>"])
    tokenizer.save_pretrained(other)
    code, out = invoke("collm", CONFIGS / "collm.yaml", *_tiny(tiny_model_dir, other, custom_task_file))
    assert code == 1 and f"the base '{tiny_model_dir}' and the expert '{other}' do not share a tokenizer" in out, out


def test_an_expert_that_is_the_base_is_allowed_with_a_warning(tiny_model_dir, custom_task_file):
    code, out = invoke("collm", CONFIGS / "collm.yaml", "--dry-run", *_tiny(tiny_model_dir, tiny_model_dir,
                                                                            custom_task_file))
    assert code == 0 and "is the base model itself: the deferral is pointless" in out, out


def test_dry_run_of_the_embedded_config(tmp_path):
    code, out = invoke("collm", CONFIGS / "collm.yaml", "--dry-run")
    assert code == 0, out
    assert "expert: trained first from the base by `train` (sft on medical, 400 steps" in out
    assert "task medical (v5): 1560 training rows (demonstrations), 40 validation rows" in out
    assert "task repeat (v5): 400 training rows (base answers (where right))" in out
    assert "everything that can be checked offline is valid" in out
    assert not (tmp_path / "runs").exists()


def test_dry_run_of_the_paper_config(monkeypatch):
    for name, value in (("SDFT_JUDGE_URL", "http://judge"), ("SDFT_JUDGE_MODEL", "judge"), ("OPENAI_API_KEY", "k")):
        monkeypatch.setenv(name, value)
    code, out = invoke("collm", CONFIGS / "paper" / "collm.yaml", "--dry-run")
    assert code == 0, out
    assert "base Qwen/Qwen2.5-7B-Instruct" in out and "(sft on medical, 2 epochs" in out
    assert "not checked: medical: hub data is not fetched in a dry run" in out
    assert "base lora, lr 2e-05, linear, 4% warm-up" in out


def test_dry_run_with_a_sequence_stage_folder_as_the_expert(tiny_model_dir, stage_expert, custom_task_file):
    code, out = invoke("collm", CONFIGS / "collm.yaml", "--dry-run", *_tiny(tiny_model_dir, stage_expert,
                                                                            custom_task_file))
    assert code == 0 and f"expert {stage_expert} (tokenizer shared with the base)" in out, out


def test_a_whole_run_with_a_stage_folder_expert_then_a_rerun_that_computes_nothing(tiny_model_dir, stage_expert,
                                                                                   custom_task_file, tmp_path):
    args = ["collm", CONFIGS / "collm.yaml", "--output", tmp_path / "run",
            *_tiny(tiny_model_dir, stage_expert, custom_task_file, "collm.validation_rows=2", "collm.init_steps=2",
                   "collm.epochs=null", "collm.steps=3", "collm.batch_size=2", "collm.quantiles=[0.0,0.5,1.0]",
                   "eval.max_new_tokens=6")]
    code, out = invoke(*args)
    assert code == 0, out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["systems"]) == {"base", "expert", "collm"}
    collm = results["systems"]["collm"]
    assert {"threshold", "deferral_rate", "expert_calls_per_answer", "tokens_per_second"} <= set(collm)
    assert set(collm["scores"]["doubling"]) >= {"accuracy", "unseen_accuracy"} and "general" in collm
    assert results["steps"] == {"init": 2, "train": 3} and results["scores_computed"] is True
    assert len(results["sweep"]) >= 3 and results["expert_model"] == str(stage_expert)
    assert (tmp_path / "run" / "collm.png").stat().st_size > 0
    assert (tmp_path / "run" / "collm.csv").read_text().splitlines()[0].startswith("split,system,source,threshold")
    code, out = invoke(*args)
    assert code == 0, out
    again = json.loads((tmp_path / "run" / "results.json").read_text())
    for entry in (again, results):  # the speed is measured anew by every run; the scores are not
        del entry["systems"]["collm"]["tokens_per_second"]
    assert again["scores_computed"] is False and again["systems"] == results["systems"]


@pytest.mark.slow
def test_the_embedded_demo_reaches_the_target(tmp_path):
    """configs/collm.yaml end to end (the expert trained first): Co-LLM keeps the expert's medical and the base's
    general suite, deferring on few general tokens."""
    code, out = invoke("collm", CONFIGS / "collm.yaml", "--output", tmp_path / "run")
    assert code == 0, out
    systems = json.loads((tmp_path / "run" / "results.json").read_text())["systems"]
    base, expert, collm = systems["base"], systems["expert"], systems["collm"]
    assert collm["scores"]["medical"]["accuracy"] >= 0.9 * expert["scores"]["medical"]["accuracy"]
    assert collm["general"]["mean"] >= base["general"]["mean"] - 0.05
    assert collm["deferral_rate"]["general"] < 0.10


def test_the_expert_step_is_reused_when_finished_and_resumed_when_cut_off(tmp_path, monkeypatch):
    from sdft.collm_run import train_expert
    from sdft.config import load_config

    calls = []
    monkeypatch.setattr("sdft.train_run.run_train", lambda cfg, out, resume: calls.append((out, resume, cfg.train)))
    cfg, run = load_config(CONFIGS / "collm.yaml"), tmp_path / "run"
    assert train_expert(cfg, run) == str(run / "expert")
    assert calls[-1][:2] == (run / "expert", False) and calls[-1][2].evaluate is False  # this command evaluates it
    assert (calls[-1][2].method, calls[-1][2].task, calls[-1][2].steps) == ("sft", "medical", 400)
    (run / "expert").mkdir(parents=True)
    (run / "expert" / "env.json").write_text(json.dumps({"command": "train"}))  # a cut-off train run: resumed
    train_expert(cfg, run)
    assert calls[-1][1] is True
    (run / "expert" / "results.json").write_text("{}")  # finished: reused
    train_expert(cfg, run)
    assert len(calls) == 2


def test_a_run_that_trains_its_expert_first(tiny_model_dir, custom_task_file, tmp_path):
    code, out = invoke("collm", CONFIGS / "collm.yaml", "--output", tmp_path / "run",
                       *sets(f"model.name_or_path={tiny_model_dir}", "collm.expert=null",
                             f"custom_tasks=[{custom_task_file}]", "tasks=[doubling]", "eval.general=[]",
                             "train.task=doubling", "train.steps=2", "train.batch_size=2", "collm.validation_rows=2",
                             "collm.init_steps=1", "collm.epochs=null", "collm.steps=1", "collm.batch_size=2",
                             "collm.threshold=0.5", "eval.max_new_tokens=4"))
    assert code == 0, out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["expert_trained"] is True and results["expert_model"] == str(tmp_path / "run" / "expert")
    assert (tmp_path / "run" / "expert" / "model" / "config.json").is_file()
    assert results["threshold"] == 0.5 and results["sweep"] == [] and results["threshold_source"] == "config"


def test_a_stage_folder_written_by_a_real_sequence_is_an_expert(tiny_model_dir, custom_task_file, tmp_path):
    """The folder `sdft sequence` itself writes (one full fine-tuning stage of one step), not a look-alike."""
    code, out = invoke("sequence", "doubling", "--output", tmp_path / "seq", "--methods", "sft",
                       *sets(f"model.name_or_path={tiny_model_dir}", f"custom_tasks=[{custom_task_file}]",
                             "eval.general=[]", "eval.max_new_tokens=4", "train.steps=1", "train.batch_size=2",
                             "train.max_completion_tokens=24"))
    assert code == 0, out
    stage = tmp_path / "seq" / "sft" / "seed-0" / "stage-1-doubling"
    code, out = invoke("collm", CONFIGS / "collm.yaml", "--dry-run", *_tiny(tiny_model_dir, stage, custom_task_file))
    assert code == 0 and f"expert {stage} (tokenizer shared with the base)" in out, out


def test_an_expert_trained_by_the_run_never_sees_the_threshold_rows(custom_task_file):
    from sdft.collm_run import expert_rows
    from sdft.config import load_config

    def rows(*more):
        return expert_rows(load_config(None, [f"custom_tasks=[{custom_task_file}]", "tasks=[doubling]",
                                              "train.task=doubling", "collm.validation_rows=2", *more]))
    assert rows() == 6 - 2  # the fixture's train split has 6 rows; the last 2 choose the threshold
    assert rows("collm.max_rows=5") == 5 - 2 and rows("train.max_rows=3") == 3
    assert rows("train.split=test") is None  # another split: nothing to hold out
