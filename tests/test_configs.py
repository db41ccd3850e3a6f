"""Every config file shipped in configs/ (all folders) loads, validates, names only known tasks, and starts
with the command that runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdft.config import load_config
from sdft.tasks.registry import require_known, task_registry

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
EXPECTED = {"collm.yaml", "paper/collm.yaml", "default.yaml", "dft.yaml", "fsdp-cpu.yaml", "sdft.yaml", "sft.yaml",
            "sft_reinvoke.yaml", "ttt.yaml", "knowledge.yaml", "seal.yaml", "paper/knowledge.yaml",
            "knowledge_stream.yaml", "paper/seal.yaml",
            "paper/medical.yaml", "paper/science.yaml", "paper/sequence.yaml", "paper/tools.yaml", "paper/ttt-bbh.yaml"}
FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "accelerate")
LAUNCH_CONFIGS = {"ddp.yaml": "MULTI_GPU", "fsdp2.yaml": "MULTI_GPU", "deepspeed-zero2.yaml": "DEEPSPEED",
                  "deepspeed-zero3.yaml": "DEEPSPEED"}
"""configs/accelerate/: accelerate's own launch configs (FSDP2 is sdft's sharding under a plain multi-GPU launch)."""


def test_every_config_file_is_found():
    assert {str(p.relative_to(CONFIGS)) for p in FILES} == EXPECTED
    assert len(FILES) == len(EXPECTED)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads_validates_and_names_known_tasks(path):
    cfg = load_config(path)
    registry = task_registry(cfg.custom_tasks, cfg.task_sources)  # checks task_sources without reading data
    require_known([*cfg.tasks, cfg.train.task, *cfg.eval.tasks, *cfg.eval.general], registry)
    first = path.read_text().splitlines()[0]
    launched = f" -m sdft.cli train configs/{path.name} --output DIR"  # a launcher's command (torchrun, accelerate)
    assert first.startswith("# sdft ") or first.endswith(launched), first  # the command that runs it
    if path.parent.name == "paper":
        assert str(path.relative_to(CONFIGS.parent)) in first, first


def test_the_ttt_bbh_preset_holds_the_papers_bbh_settings():
    t = load_config(CONFIGS / "paper" / "ttt-bbh.yaml").ttt
    assert (t.source, t.shots, t.scope, t.leave_out, t.permutations, t.max_samples) == ("bbh", 10, "task", 1, 40, 40)
    assert (t.epochs, t.batch_size, t.learning_rate, t.warmup_ratio, t.cosine, t.loss_on) == (1.0, 5, 1e-4, 0.1, True, "all_outputs")
    assert (t.lora.r, t.lora.alpha, t.lora.dropout) == (64, 64, 0.05)


def test_paper_presets_hold_the_published_recipe():
    for name in ("science", "tools", "medical"):
        cfg = load_config(CONFIGS / "paper" / f"{name}.yaml")
        t = cfg.train
        assert cfg.model.name_or_path == "Qwen/Qwen2.5-7B-Instruct" and cfg.model.dtype == "bfloat16"
        assert (t.method, t.teacher, t.ema_rate, t.learning_rate, t.batch_size, t.epochs) == ("sdft", "ema", 0.01, 5e-5, 32, 2)
        assert (t.loss.divergence, t.loss.top_k, t.loss.skip_first_tokens) == ("forward_kl", None, 3)
        assert (t.warmup_steps, t.max_grad_norm, t.weight_decay, t.lr_schedule) == (10, 1.0, 0.0, "cosine")
        assert (t.max_prompt_tokens, t.max_completion_tokens, t.rollout.temperature) == (1024, 2048, 1.0)
    sequence = load_config(CONFIGS / "paper" / "sequence.yaml")
    assert sequence.tasks == ["tools", "science", "medical"]
    assert {k: v["steps"] for k, v in sequence.sequence.stages.items()} == {"tools": 250, "science": 300, "medical": 300}
    assert load_config(CONFIGS / "paper" / "knowledge.yaml").train.max_completion_tokens == 1024


def test_task_sources_take_dotted_overrides_and_name_mistakes(tmp_path):
    import yaml

    from sdft.config import config_to_dict
    from sdft.errors import UserError

    cfg = load_config(CONFIGS / "paper" / "knowledge.yaml", ["task_sources.knowledge.teacher_context=answer",
                                                              "task_sources.medical.source=hub"])
    assert cfg.task_sources["knowledge"].teacher_context == "answer"
    assert cfg.task_sources["knowledge"].path == "data/knowledge"  # the rest of the entry is kept
    assert cfg.task_sources["medical"].source == "hub"
    (tmp_path / "resolved.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))  # a run folder's config.yaml
    assert load_config(tmp_path / "resolved.yaml") == cfg
    for override, message in [("task_sources.science.sorce=hub", "did you mean 'task_sources.science.source'"),
                              ("task_sources.science.source=web", "must be one of 'embedded', 'hub', 'local'"),
                              ("train.epochs=0", "train.epochs must be > 0")]:
        with pytest.raises(UserError, match=message):
            load_config(None, [override])


@pytest.mark.parametrize("name", sorted(LAUNCH_CONFIGS))
def test_launch_configs_load_and_start_with_their_command(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = CONFIGS / "accelerate" / name
    assert {p.name for p in (CONFIGS / "accelerate").iterdir()} == set(LAUNCH_CONFIGS)
    launch = load_config_from_file(str(path))
    assert launch.distributed_type.value == LAUNCH_CONFIGS[name] and launch.num_processes == 8
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# accelerate launch --config_file configs/accelerate/{name} -m sdft.cli "), first
    assert ("train.sharding=fsdp" in first) == (name == "fsdp2.yaml")
    if LAUNCH_CONFIGS[name] == "DEEPSPEED":
        assert launch.deepspeed_config["zero_stage"] == int(name[-6])


def test_the_fsdp_cpu_config_shards_an_ema_teacher_over_two_processes():
    cfg = load_config(CONFIGS / "fsdp-cpu.yaml")
    assert (cfg.train.sharding, cfg.train.teacher, cfg.model.device) == ("fsdp", "ema", "cpu")
    assert cfg.train.batch_size % 2 == 0
    assert (CONFIGS / "fsdp-cpu.yaml").read_text().startswith("# torchrun --nproc_per_node 2 -m sdft.cli train")
