"""`--dry-run`: the paper's configs checked offline on fixture data, with the plan printed (steps, tokens,
memory) and every problem that would stop the run named; nothing is loaded or written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdft.cli import app
from sdft.config import load_config
from sdft.dry_run import memory_lines, model_shapes

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "configs" / "paper"
FIXTURES = ROOT / "tests" / "fixtures" / "paper"
SCIENCE_FIXTURES = [f"task_sources.science.path={FIXTURES / 'science'}",
                    "task_sources.science.files={train: train_data.jsonl, test: eval_data.jsonl}"]
TOOLS_FIXTURES = [f"task_sources.tools.path={FIXTURES / 'tools'}",
                  "task_sources.tools.files={train: train_data.jsonl, test: eval_data.jsonl}"]
# Qwen2.5-7B-Instruct's shapes (its config.json on the hub), hand-copied: no weights, no download.
QWEN_7B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
           "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
           "vocab_size": 152064, "max_position_embeddings": 32768, "tie_word_embeddings": False}
QWEN_7B_PARAMS = 7_615_616_512


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], prog_name="sdft")
    return result.exit_code, " ".join(result.output.split())


def sets(*overrides):
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture
def qwen_shapes(tmp_path) -> Path:
    folder = tmp_path / "qwen7b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN_7B))
    return folder


def test_science_preset_plan_on_fixture_data(qwen_shapes, tmp_path):
    code, out = invoke("train", PAPER / "science.yaml", "--dry-run",
                       *sets(*SCIENCE_FIXTURES, f"model.name_or_path={qwen_shapes}"))
    assert code == 0, out
    assert "7.62B parameters, hidden 3584, 28 layers, vocabulary 152064" in out
    assert "optimizer steps: 1 = ceil(2 epochs x 3 rows / 32)" in out
    assert "student forward+backward <= 98,304; teacher forward <= 163,840" in out  # 32 x (1024 + 2048), 32 x (3072 + 2048)
    assert "weights: 14.2 GiB" in out and "EMA shadow (fp32): 28.4 GiB" in out and "total, rough:" in out
    assert "everything that can be checked offline is valid" in out
    assert not (tmp_path / "runs").exists()  # nothing written


def test_memory_estimate_follows_the_shapes_and_the_method(qwen_shapes):
    cfg = load_config(PAPER / "science.yaml", [f"model.name_or_path={qwen_shapes}"])
    shapes = model_shapes(cfg)
    assert shapes.params == QWEN_7B_PARAMS
    full = " ".join(memory_lines(cfg, shapes))
    assert f"weights: {QWEN_7B_PARAMS * 2 / 1024**3:.1f} GiB" in full and "teacher copy" in full
    lora = load_config(PAPER / "science.yaml", [f"model.name_or_path={qwen_shapes}", "lora.enabled=true",
                                                "train.method=sft"])
    small = " ".join(memory_lines(lora, shapes))
    assert "teacher copy" not in small and "gradients: 77.0 MiB" in small  # 40.4M r=16 adapters (7 projections x 28 layers), bf16
    ema = lambda mode: " ".join(memory_lines(load_config(PAPER / "science.yaml", [  # noqa: E731
        f"model.name_or_path={qwen_shapes}", "lora.enabled=true", f"train.lora_ema={mode}"]), shapes))
    assert "EMA shadow of the adapters (fp32): 154.0 MiB" in ema("adapter")  # the 40.4M adapter weights x 4 bytes
    # 28 layers x (2 x 3584^2 + 2 x 3584 x 512 + 3 x 3584 x 18944) = 6.525B weights x 4 bytes
    assert "EMA shadow of the adapted layers' updates (fp32, train.lora_ema=update): 24.3 GiB" in ema("update")


def test_a_hub_model_not_on_disk_is_reported_not_fetched():
    code, out = invoke("train", PAPER / "science.yaml", "--dry-run", *sets(*SCIENCE_FIXTURES))
    assert code == 0, out
    assert "Qwen/Qwen2.5-7B-Instruct: its config.json is not available offline" in out
    assert "connect" not in out  # transformers' wording for a cache miss would suggest a network attempt
    assert "tokenizer is not available offline" in out


def test_a_local_model_folder_with_a_broken_config_is_named_as_such(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    code, out = invoke("train", ROOT / "configs" / "sdft.yaml", "--dry-run", *sets(f"model.name_or_path={folder}"))
    assert code == 0, out
    assert "config.json cannot be read" in out and "config.json is not available offline" not in out


def test_medical_needs_a_judge_and_its_hub_data_is_not_fetched(monkeypatch, qwen_shapes):
    for name in ("SDFT_JUDGE_URL", "SDFT_JUDGE_MODEL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    code, out = invoke("train", PAPER / "medical.yaml", "--dry-run", *sets(f"model.name_or_path={qwen_shapes}"))
    assert code == 1
    assert "hub dataset FreedomIntelligence/medical-o1-reasoning-SFT (unpinned" in out
    assert "problem: medical: graded by an LLM judge, but eval.judge.model is not set (nor SDFT_JUDGE_MODEL)" in out
    monkeypatch.setenv("SDFT_JUDGE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("SDFT_JUDGE_MODEL", "judge")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-printed")
    code, out = invoke("train", PAPER / "medical.yaml", "--dry-run", *sets(f"model.name_or_path={qwen_shapes}"))
    assert code == 0, out
    assert "epochs x rows / 32 (rows known once the data is read)" in out and "sk-never-printed" not in out


def test_rows_over_a_cap_are_a_problem_unless_skipped(tiny_model_dir):
    args = ["train", PAPER / "science.yaml", "--dry-run",
            *sets(*SCIENCE_FIXTURES, f"model.name_or_path={tiny_model_dir}", "train.max_prompt_tokens=300")]
    code, out = invoke(*args)
    # the character tokenizer: ~1 token per character, and every chat prompt is longer than 300
    assert code == 0 and "train.max_prompt_tokens 300: longest 487, 3 of 3 rows over" in out
    code, out = invoke(*args, "--set", "train.overlong_prompts=error")
    assert code == 1 and "training rows exceed train.max_prompt_tokens=300; the run would stop" in out


def test_sequence_preset_plans_every_stage(monkeypatch, qwen_shapes):
    monkeypatch.setenv("SDFT_JUDGE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("SDFT_JUDGE_MODEL", "judge")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    code, out = invoke("sequence", "-c", PAPER / "sequence.yaml", "--dry-run",
                       *sets(*SCIENCE_FIXTURES, *TOOLS_FIXTURES, f"model.name_or_path={qwen_shapes}"))
    assert code == 0, out
    for method in ("sdft", "sft"):
        for task, steps in (("tools", 250), ("science", 300), ("medical", 300)):
            assert f"{method} on {task}:" in out
    assert out.count("optimizer steps: 250 (train.steps)") == 2 and out.count("optimizer steps: 300 (train.steps)") == 4


def test_sequence_plans_on_the_task_sources_not_the_miniatures(tmp_path):
    from sdft.sequence import plan_sequence

    cfg = load_config(PAPER / "sequence.yaml", [*SCIENCE_FIXTURES, *TOOLS_FIXTURES, "tasks=[tools, science]",
                                                "sequence.stages={}", "eval.judge.backend=none"])
    plan = plan_sequence(cfg, tmp_path / "seq")
    assert [t.name for t in plan.tasks] == ["tools", "science"]
    for task in plan.tasks:  # read from the fixture files, not the embedded miniatures
        assert task.source.startswith(str(FIXTURES / task.name)) and task.source != "embedded"


def test_cpt_plan_counts_corpus_blocks(tiny_model_dir):
    code, out = invoke("train", PAPER / "knowledge.yaml", "--dry-run",
                       *sets(f"task_sources.knowledge.path={FIXTURES / 'knowledge'}", f"model.name_or_path={tiny_model_dir}",
                             "train.method=cpt", "train.max_completion_tokens=128", "eval.judge.backend=local",
                             f"eval.judge.model={tiny_model_dir}"))
    assert code == 0, out
    # the two fixture articles, one token per character, in blocks of 128: 3 + 3 blocks
    assert "cpt on knowledge: 6 corpus blocks" in out and "optimizer steps: 1 = ceil(4 epochs x 6 blocks / 32)" in out


def test_memory_per_process_under_sharding(qwen_shapes):
    """--processes N: with train.sharding=fsdp every state is split N ways and a rollout gathers the weights whole
    (sdft/distributed.py); without it every process holds everything (DDP). 7B, bf16, EMA teacher."""
    base = ["train", PAPER / "science.yaml", "--dry-run", *sets(*SCIENCE_FIXTURES, f"model.name_or_path={qwen_shapes}",
                                                             "train.gradient_accumulation=4")]
    code, ddp = invoke(*base, "--processes", 8)
    assert code == 0, ddp
    assert "weights: 14.2 GiB" in ddp and "total, rough: 111.7 GiB per device (8 processes, train.sharding=none" in ddp
    code, fsdp = invoke(*base, "--processes", 8, *sets("train.sharding=fsdp"))
    assert code == 0, fsdp
    assert "weights, 1/8 shard: 1.8 GiB" in fsdp and "EMA shadow (fp32), 1/8 shard: 3.5 GiB" in fsdp
    assert "weights gathered whole for rollouts: 14.2 GiB" in fsdp
    assert "total, rough: 39.0 GiB per device (8 processes, train.sharding=fsdp" in fsdp
    code, out = invoke(*base, "--processes", 16)  # 32 prompts over 4 micro-batches x 16 processes: no
    assert code == 1 and "train.batch_size=32 must split evenly over train.gradient_accumulation=4 x 16 processes" in out


def test_the_knowledge_table_plans_on_local_paper_files(tiny_model_dir):
    # configs/knowledge.yaml is the embedded table; the paper's is the same command with the knowledge task's source
    code, out = invoke("sequence", "-c", ROOT / "configs" / "knowledge.yaml", "--dry-run",
                       *sets("task_sources.knowledge={source: local, path: " + str(FIXTURES / "knowledge") + "}",
                             "eval.tasks=[knowledge_ood, knowledge_oracle, knowledge_oracle_ood]",
                             f"model.name_or_path={tiny_model_dir}", "eval.judge.backend=local",
                             f"eval.judge.model={tiny_model_dir}", "sequence.seeds=[0]"))
    assert code == 0, out  # SFT's rows are checked with its own teacher context (the answer): none over the cap
    for method in ("sdft", "sft", "cpt"):
        assert f"{method} on knowledge:" in out
    assert "cpt on knowledge: 5 corpus blocks" in out  # the fixture's articles, not the embedded ones


@pytest.mark.parametrize("override,message", [("sequence.method_overrides={sfd: {train.steps: 3}}", "not methods"),
                                              ("eval.tasks=[knowledge_odd]", "unknown task 'knowledge_odd'")])
def test_the_sequence_dry_run_refuses_what_the_run_would(override, message, tiny_model_dir):
    code, out = invoke("sequence", "-c", ROOT / "configs" / "knowledge.yaml", "--dry-run",
                       *sets(f"model.name_or_path={tiny_model_dir}", override))
    assert code == 1 and message in out, out
