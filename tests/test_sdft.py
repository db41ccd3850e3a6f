"""The SDFT trainer on a random tiny model: logits alignment, teachers, every parameter moves, exact resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import doubling_task, stop_after
from sdft.adapters import wrap_with_lora
from sdft.config import ModelConfig, load_config
from sdft.errors import UserError
from sdft.methods import loop
from sdft.methods import sdft as sdft_method
from sdft.generation.base import completion_from_tokens, left_pad, prompt_pass
from sdft.generation.native import NativeBackend, sample_token
from sdft.methods.rollout import completion_logits, prepare_rows, student_completion_logits
from sdft.methods.stage import Stage
from sdft.methods.teacher import EmaAdapterTeacher, EmaCopyTeacher, EmaUpdateTeacher, FrozenAdapterTeacher, FrozenCopyTeacher
from sdft.models import load_model
from sdft.tasks.spec import TaskSpec

pytestmark = pytest.mark.usefixtures("one_thread")
FIELDS = {"prompt": "question", "demonstration": "response", "answer": "label"}


@pytest.fixture
def task() -> TaskSpec:
    return doubling_task(12)


def make_stage(tiny_model_dir, task, run_dir, *overrides, lora=False, dtype="float32", resume=False):
    cfg = load_config(None, [
        f"model.name_or_path={tiny_model_dir}", f"model.dtype={dtype}", "tasks=[doubling]",
        "train.task=doubling", "train.steps=4", "train.batch_size=4", "train.gradient_accumulation=2",
        "train.max_completion_tokens=10", "train.learning_rate=1e-2", "train.warmup_steps=0",
        "train.checkpoint_every=2", "train.log_every=1", f"lora.enabled={str(lora).lower()}",
        "lora.r=4", "lora.target_modules=[q_proj, v_proj]", *overrides,
    ])
    loaded = load_model(cfg.model)
    if lora:
        loaded.model = wrap_with_lora(loaded.model, cfg.lora)
    return Stage(cfg, loaded, task, run_dir, resume)


def test_left_padded_completion_logits_equal_unpadded(tiny_model_dir):
    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    model, pad = loaded.model, loaded.tokenizer.pad_token_id
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    completion = completion_from_tokens(torch.tensor([[20, 21, 1, 0], [22, 23, 24, 25]]), eos_id=1, pad_id=pad)
    assert completion.mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]] and completion.hit_cap.tolist() == [False, True]
    ids, mask = left_pad(prompts, pad, torch.device("cpu"))
    with torch.no_grad():
        batched = completion_logits(model, ids, mask, completion)
        for i, prompt in enumerate(prompts):
            length = int(completion.mask[i].sum())
            alone = model(torch.tensor([prompt + completion.ids[i, :length].tolist()])).logits[0]
            expected = alone[len(prompt) - 1 : len(prompt) - 1 + length]
            torch.testing.assert_close(batched[i, :length], expected, atol=1e-5, rtol=1e-5)


def test_overlong_prompt_names_the_row_or_is_skipped(tiny_model_dir, task, tmp_path):
    stage = make_stage(tiny_model_dir, task, tmp_path, "train.max_teacher_prompt_tokens=162")
    with pytest.raises(UserError, match=r"task 'doubling' split 'train' row \d+: the teacher prompt has \d+ tokens"):
        prepare_rows(task.split("train"), task, stage.loaded.tokenizer, stage.cfg.train)
    skipping = make_stage(tiny_model_dir, task, tmp_path, "train.max_teacher_prompt_tokens=162", "train.overlong_prompts=skip")
    kept = prepare_rows(task.split("train"), task, skipping.loaded.tokenizer, skipping.cfg.train)
    assert 0 < len(kept) < len(task.split("train"))
    assert all(len(r.teacher_ids) <= 162 for r in kept)


def test_one_step_changes_every_trainable_parameter(tiny_model_dir, task, tmp_path):
    stage = make_stage(tiny_model_dir, task, tmp_path, "train.teacher=ema", "train.ema_rate=0.5")
    trainer = sdft_method.build_trainer(stage)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics, samples = sdft_method.train_step(trainer)
    unchanged = [n for n, p in trainer.model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []
    assert metrics["loss"] > 0 and metrics["num_tokens"] > 0 and len(samples) == 4


def test_lora_keeps_base_weights_and_makes_no_second_copy(tiny_model_dir, task, tmp_path):
    stage = make_stage(tiny_model_dir, task, tmp_path, lora=True)
    trainer = sdft_method.build_trainer(stage)
    assert isinstance(trainer.teacher, FrozenAdapterTeacher)
    assert not any(isinstance(v, torch.nn.Module) and v is not trainer.model for v in vars(trainer.teacher).values())
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    sdft_method.train_step(trainer)  # LoRA's B starts at 0, so A's first gradient is 0: two steps move both
    sdft_method.train_step(trainer)
    params = dict(trainer.model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert all(not torch.equal(params[n], v) for n, v in trainable.items())


def closed_form_ema(history: list[dict], rate: float) -> dict:
    """phi_0 = theta_0; phi_k = rate * theta_k + (1 - rate) * phi_{k-1}, in float64."""
    phi = {n: t.double() for n, t in history[0].items()}
    for theta in history[1:]:
        phi = {n: rate * theta[n].double() + (1 - rate) * phi[n] for n in phi}
    return phi


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ema_teacher_equals_closed_form_history(tiny_model_dir, task, tmp_path, dtype):
    stage = make_stage(tiny_model_dir, task, tmp_path, "train.teacher=ema", "train.ema_rate=0.3", dtype=dtype)
    trainer = sdft_method.build_trainer(stage)
    assert isinstance(trainer.teacher, EmaCopyTeacher)
    snapshot = lambda: {n: p.detach().float().clone() for n, p in trainer.model.named_parameters()}  # noqa: E731
    history = [snapshot()]
    for _ in range(3):
        sdft_method.train_step(trainer)
        history.append(snapshot())
    expected = closed_form_ema(history, 0.3)
    for name, shadow in trainer.teacher.shadow.items():
        assert shadow.dtype == torch.float32
        torch.testing.assert_close(shadow.double(), expected[name], atol=1e-6, rtol=1e-5)
    # the runnable copy holds the shadow in the model's dtype
    copy_params = dict(trainer.teacher.copy.named_parameters())
    name = next(iter(trainer.teacher.shadow))
    assert torch.equal(copy_params[name], trainer.teacher.shadow[name].to(copy_params[name].dtype))


def test_ema_adapter_teacher_is_the_ema_of_the_adapter_weights_and_leaves_the_student_alone(tiny_model_dir, task, tmp_path):
    stage = make_stage(tiny_model_dir, task, tmp_path, "train.teacher=ema", "train.ema_rate=0.4", lora=True)
    trainer = sdft_method.build_trainer(stage)
    assert isinstance(trainer.teacher, EmaAdapterTeacher)  # train.lora_ema=adapter is the default
    adapter = lambda: {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}  # noqa: E731
    history = [adapter()]
    assert history[0] and all(".lora_" in name for name in history[0])
    for _ in range(3):
        sdft_method.train_step(trainer)
        history.append(adapter())
    expected = closed_form_ema(history, 0.4)
    assert trainer.teacher.shadow.keys() == expected.keys()
    for name, shadow in trainer.teacher.shadow.items():
        assert shadow.dtype == torch.float32
        torch.testing.assert_close(shadow.double(), expected[name], atol=1e-6, rtol=1e-5)
    # the teacher's forward pass is the student's modules with the shadow as the adapter's weights
    averaged = copy.deepcopy(trainer.model)
    with torch.no_grad():
        for name, p in averaged.named_parameters():
            if name in expected:
                p.copy_(expected[name])
    ids, mask = left_pad([[5, 6, 7]], 0, torch.device("cpu"))
    rollout = completion_from_tokens(torch.tensor([[8, 9, 10]]), eos_id=1, pad_id=0)
    with torch.no_grad():
        reference, student_before = completion_logits(averaged, ids, mask, rollout), completion_logits(trainer.model, ids, mask, rollout)
    student_storage = {n: p.data_ptr() for n, p in trainer.model.named_parameters() if p.requires_grad}
    torch.testing.assert_close(trainer.teacher.logits(ids, mask, rollout), reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(reference, student_before, atol=1e-3)  # the teacher differs from the student...
    for name, p in trainer.model.named_parameters():  # ...and the student has its own tensors back, unchanged
        if p.requires_grad:
            assert p.data_ptr() == student_storage[name] and torch.equal(p.data, history[-1][name])
    with torch.no_grad():
        assert torch.equal(completion_logits(trainer.model, ids, mask, rollout), student_before)


@pytest.mark.parametrize("teacher, lora_ema", [("ema", "adapter"), ("ema", "update"), ("frozen", "adapter")])
def test_the_teacher_runs_without_dropout(tiny_model_dir, task, tmp_path, teacher, lora_ema):
    stage = make_stage(tiny_model_dir, task, tmp_path, f"train.teacher={teacher}", f"train.lora_ema={lora_ema}",
                       "lora.dropout=0.5", lora=True)
    with torch.no_grad():
        for name, p in stage.loaded.model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a non-zero adapter at stage start, so that dropout on its path would show
    trainer = sdft_method.build_trainer(stage)
    ids, mask = left_pad([[5, 6, 7]], 0, torch.device("cpu"))
    rollout = completion_from_tokens(torch.tensor([[8, 9, 10]]), eos_id=1, pad_id=0)
    assert trainer.model.training
    torch.manual_seed(0)
    first = trainer.teacher.logits(ids, mask, rollout)
    torch.manual_seed(1)
    assert torch.equal(trainer.teacher.logits(ids, mask, rollout), first) and trainer.model.training


def test_ema_update_teacher_is_the_ema_of_the_effective_update(tiny_model_dir, task, tmp_path):
    stage = make_stage(tiny_model_dir, task, tmp_path, "train.teacher=ema", "train.ema_rate=0.4", "train.lora_ema=update",
                       lora=True)
    trainer = sdft_method.build_trainer(stage)
    assert isinstance(trainer.teacher, EmaUpdateTeacher)
    layer_name, layer = next(iter(trainer.teacher.layers.items()))
    adapter = layer.active_adapters[0]
    effective = lambda: (layer.lora_B[adapter].weight @ layer.lora_A[adapter].weight * layer.scaling[adapter]).detach().clone()  # noqa: E731
    history = [{"w": effective()}]
    for _ in range(3):
        sdft_method.train_step(trainer)
        history.append({"w": effective()})
    torch.testing.assert_close(trainer.teacher.shadow[layer_name].double(), closed_form_ema(history, 0.4)["w"], atol=1e-6, rtol=1e-5)
    # the teacher's forward pass is base weights + shadow: compare against a merged copy
    merged = copy.deepcopy(trainer.model)
    with torch.no_grad():
        for name, shadow in trainer.teacher.shadow.items():
            merged.get_submodule(name).base_layer.weight += shadow
    ids, mask = left_pad([[5, 6, 7]], 0, torch.device("cpu"))
    rollout = completion_from_tokens(torch.tensor([[8, 9, 10]]), eos_id=1, pad_id=0)
    with merged.disable_adapter(), torch.no_grad():
        expected = completion_logits(merged, ids, mask, rollout)
    torch.testing.assert_close(trainer.teacher.logits(ids, mask, rollout), expected, atol=1e-5, rtol=1e-5)


def test_frozen_teacher_is_the_in_memory_stage_start_not_the_disk(tiny_model_dir, task, tmp_path):
    stage = make_stage(tiny_model_dir, task, tmp_path)
    with torch.no_grad():  # an earlier stage changed the weights in memory: the files on disk are stale
        for p in stage.loaded.model.parameters():
            p.add_(0.01)
    stage_start = {n: p.detach().clone() for n, p in stage.loaded.model.named_parameters()}
    trainer = sdft_method.build_trainer(stage)
    assert isinstance(trainer.teacher, FrozenCopyTeacher)
    sdft_method.train_step(trainer)
    teacher = dict(trainer.teacher.copy.named_parameters())
    student = dict(trainer.model.named_parameters())
    on_disk = dict(load_model(stage.cfg.model).model.named_parameters())
    for name, value in stage_start.items():
        assert torch.equal(teacher[name], value)
        assert not torch.equal(student[name], value)
        assert not torch.equal(on_disk[name], value)


@pytest.mark.parametrize("teacher, lora, lora_ema", [("ema", False, "adapter"), ("frozen", False, "adapter"),
                                                     ("ema", True, "adapter"), ("ema", True, "update")])
def test_resume_after_an_interruption_equals_an_uninterrupted_run(tiny_model_dir, task, tmp_path, monkeypatch, teacher, lora,
                                                                  lora_ema):
    def final_state(run_dir, stop_at=None, resume=False):
        stage = make_stage(tiny_model_dir, task, run_dir, f"train.teacher={teacher}", f"train.lora_ema={lora_ema}", lora=lora,
                           resume=resume)
        if stop_at is not None:
            monkeypatch.setattr(loop, "graceful_interrupt", stop_after(stop_at))
            with pytest.raises(KeyboardInterrupt):
                sdft_method.train_sdft(stage)
            monkeypatch.undo()
            return None
        sdft_method.train_sdft(stage)
        trainer_teacher = sdft_method.build_trainer(Stage(stage.cfg, stage.loaded, task, run_dir, resume=True)).teacher
        return ({n: p.detach().clone() for n, p in stage.loaded.model.named_parameters()},
                {k: v.clone() for k, v in trainer_teacher.state_dict().items()})

    uninterrupted = final_state(tmp_path / "a")
    final_state(tmp_path / "b", stop_at=3)  # Ctrl-C after step 3: checkpoint at step 3, not at 2 or 4
    resumed = final_state(tmp_path / "b", resume=True)
    for expected, got in zip(uninterrupted, resumed):
        assert expected.keys() == got.keys() and expected
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], atol=0, rtol=0)
    steps = [line for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 4


def test_resuming_with_another_lora_ema_setting_says_so(tiny_model_dir, task, tmp_path):
    saved = make_stage(tiny_model_dir, task, tmp_path, "train.teacher=ema", "train.lora_ema=update", "train.steps=2", lora=True)
    sdft_method.train_sdft(saved)
    resumed = make_stage(tiny_model_dir, task, tmp_path, "train.teacher=ema", "train.lora_ema=adapter", "train.steps=4",
                         lora=True, resume=True)
    with pytest.raises(UserError, match="saved with train.teacher=ema with train.lora_ema=update, this run has "
                                        "train.teacher=ema with train.lora_ema=adapter"):
        sdft_method.build_trainer(resumed)
    saved = tmp_path / "checkpoints" / "step-000002" / "trainer.pt"  # as written before checkpoints named the teacher
    state = torch.load(saved, weights_only=False)
    del state["teacher"]
    torch.save(state, saved)
    with pytest.raises(UserError, match="other lora or train.lora_ema settings.*--set train.lora_ema=update"):
        sdft_method.build_trainer(resumed)
    other_rank = make_stage(tiny_model_dir, task, tmp_path, "train.teacher=ema", "train.lora_ema=update", "lora.r=2",
                            "train.steps=4", lora=True, resume=True)
    with pytest.raises(UserError, match="student weights do not fit this model"):  # same names, other shapes
        sdft_method.build_trainer(other_rank)


def test_resuming_a_frozen_teacher_run_as_an_ema_one_says_so(tiny_model_dir, task, tmp_path):
    """Full fine-tuning: both teachers hold every weight under the same names, so only the recorded setting tells."""
    sdft_method.train_sdft(make_stage(tiny_model_dir, task, tmp_path, "train.teacher=frozen", "train.steps=2"))
    resumed = make_stage(tiny_model_dir, task, tmp_path, "train.teacher=ema", "train.steps=4", resume=True)
    with pytest.raises(UserError, match="saved with train.teacher=frozen, this run has train.teacher=ema"):
        sdft_method.build_trainer(resumed)


def test_resume_after_a_crash_mid_run_equals_an_uninterrupted_run(tiny_model_dir, task, tmp_path, monkeypatch):
    def run(run_dir, resume=False):
        stage = make_stage(tiny_model_dir, task, run_dir, "train.teacher=ema", resume=resume)
        sdft_method.train_sdft(stage)
        return {n: p.detach().clone() for n, p in stage.loaded.model.named_parameters()}

    expected = run(tmp_path / "a")
    real_step, calls = sdft_method.train_step, {"n": 0}

    def crashing_step(trainer):
        calls["n"] += 1
        if calls["n"] == 4:  # dies inside step 4: the newest checkpoint is step 2's
            raise RuntimeError("killed")
        return real_step(trainer)

    monkeypatch.setattr(sdft_method, "train_step", crashing_step)
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "b")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-000002"]
    got = run(tmp_path / "b", resume=True)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=0, rtol=0)
    metrics = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2, 3, 4]


def test_nan_loss_stops_with_a_clear_message(tiny_model_dir, task, tmp_path, monkeypatch):
    stage = make_stage(tiny_model_dir, task, tmp_path)
    real = sdft_method.distillation_loss

    def nan_loss(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(sdft_method, "distillation_loss", nan_loss)
    with pytest.raises(UserError, match=r"the loss became nan at step 1; no checkpoint was saved yet"):
        sdft_method.train_sdft(stage)


# ---- the hot path: the lean sampler and the shared prompt pass change no number ----


@pytest.mark.parametrize("temperature, top_p, lean", [(1.0, 1.0, True), (0.7, 0.8, True), (0.7, 0.8, False)])
def test_lean_sampler_draws_the_tokens_generate_draws(tiny_model_dir, monkeypatch, temperature, top_p, lean):
    """Same seed, same tokens as transformers' generate: temperature, top-p, eos, the length cap and left padding;
    rows finish at different steps, so compaction reorders the batch (with the lean step, and with the generic one)."""
    from sdft.generation import native as sampler
    from sdft.generation.hf import NEUTRAL_DECODING

    if not lean:
        monkeypatch.setattr(sampler, "lean_decoder", lambda model: None)

    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    model, tokenizer = loaded.model, loaded.tokenizer
    eos = tokenizer.eos_token_id
    model.lm_head.register_forward_hook(lambda m, i, out: out + 2.0 * (torch.arange(out.shape[-1]) == eos))  # eos ~8%
    cfg = load_config(None, [f"train.rollout.temperature={temperature}", f"train.rollout.top_p={top_p}",
                             "train.max_completion_tokens=9"]).train
    ids, mask = left_pad([[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]] * 4, tokenizer.pad_token_id, torch.device("cpu"))
    capped = []
    for seed in range(3):
        torch.manual_seed(seed)
        ours = NativeBackend().sample(model, tokenizer, ids, mask, cfg.rollout, cfg.max_completion_tokens)
        torch.manual_seed(seed)
        output = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, **NEUTRAL_DECODING,
                                temperature=temperature, top_p=top_p, max_new_tokens=9, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=eos, use_cache=True)
        reference = completion_from_tokens(output[:, ids.shape[1] :], eos, tokenizer.pad_token_id)
        assert torch.equal(ours.ids, reference.ids) and torch.equal(ours.mask, reference.mask)
        assert torch.equal(ours.hit_cap, reference.hit_cap)
        capped += ours.hit_cap.tolist()
    assert any(capped) and not all(capped)  # both ways of ending occur


def test_compaction_moves_only_the_rows_that_change_place_and_keeps_the_buffers():
    from sdft.generation.native import PreallocatedLayer, _filled_holes_order

    going = torch.tensor([True, False, True, False, True, True])
    assert _filled_holes_order(going).tolist() == [0, 4, 2, 5]  # rows 1 and 3 finished: 4 and 5 take their places
    keys, values = torch.randn(6, 2, 3, 4), torch.randn(6, 2, 3, 4)
    layer = PreallocatedLayer(keys, values, capacity=8)
    storage = layer._keys.data_ptr()
    layer.batch_select_indices(torch.tensor([5, 0, 3]))  # any order, as DynamicLayer.batch_select_indices takes it
    assert torch.equal(layer.keys, keys[[5, 0, 3]]) and torch.equal(layer.values, values[[5, 0, 3]])
    assert layer._keys.data_ptr() == storage  # no new buffer of the whole capacity
    new_key, new_value = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4)
    got_keys, got_values = layer.update(new_key, new_value)
    assert torch.equal(got_keys, torch.cat([keys[[5, 0, 3]], new_key], dim=2))
    assert torch.equal(got_values, torch.cat([values[[5, 0, 3]], new_value], dim=2))


def _qwen2_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=1)).eval()  # q/k/v biases, GQA


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("kind", ["llama", "llama-lora", "qwen2"])
def test_lean_decoding_step_gives_the_generic_forwards_logits_bit_for_bit(tiny_model_dir, kind, padded):
    """Prefill a left-padded batch, then decode 5 tokens twice: model(...) and the lean step, on equal caches."""
    from sdft.config import LoraConfig
    from sdft.generation.base import CACHE_KWARG
    from sdft.generation.lean_decode import lean_decoder
    from sdft.generation.native import _decoding_cache

    if kind == "qwen2":
        model = _qwen2_model()
    else:
        model = load_model(ModelConfig(name_or_path=str(tiny_model_dir))).model
        if kind == "llama-lora":
            model = wrap_with_lora(model, LoraConfig(enabled=True, r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
            for name, param in model.named_parameters():  # a trained adapter: B is zero at init
                if "lora_B" in name:
                    param.data.normal_(0, 0.5)
    lean = lean_decoder(model)
    assert lean is not None
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]] if padded else [[5, 6, 7], [11, 12, 13], [13, 14, 15]]
    ids, mask = left_pad(prompts, 0, torch.device("cpu"))
    prompt = prompt_pass(model, ids, mask)
    caches = [_decoding_cache(prompt.cache, ids.shape[1] + 5) for _ in range(2)]
    position, tokens = mask.sum(dim=1, keepdim=True), torch.tensor([16, 17, 18])
    with torch.no_grad():
        for step in range(5):
            step_mask = torch.cat([mask, mask.new_ones(3, step + 1)], dim=1)
            generic = model(input_ids=tokens[:, None], attention_mask=step_mask, position_ids=position + step,
                            use_cache=True, **{CACHE_KWARG: caches[0]}).logits[:, -1]
            ours = lean.step(tokens, caches[1], step_mask, position + step)
            assert torch.equal(ours, generic)
            tokens = generic.argmax(dim=-1)


def test_lean_decoding_is_not_used_where_it_would_not_be_exact(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from sdft.generation.lean_decode import lean_decoder

    eager = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="eager")
    assert lean_decoder(eager) is None  # eager attention takes an additive float mask, not the boolean one
    assert lean_decoder(torch.nn.Linear(2, 2)) is None


def test_top_p_keeps_the_smallest_set_over_the_mass():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    draws = torch.stack([sample_token(logits, 1.0, 0.8) for _ in range(400)])
    assert set(draws.flatten().tolist()) == {0, 1}  # 0.5 + 0.3 reach 0.8: the rest is never drawn
    assert set(torch.stack([sample_token(logits, 1.0, 0.81) for _ in range(400)]).flatten().tolist()) == {0, 1, 2}


def test_shared_prompt_pass_gives_the_one_pass_logits_and_gradients(tiny_model_dir):
    """The student's forward split in two (the prompt pass, reused by the sampler, then the completion on top of its
    cache) has the values and gradients of one left-padded forward with a mask."""
    model = load_model(ModelConfig(name_or_path=str(tiny_model_dir))).model.train()
    ids, mask = left_pad([[5, 6, 7, 8, 9], [10, 11]], 0, torch.device("cpu"))
    rollout = completion_from_tokens(torch.tensor([[20, 21, 1, 0], [22, 23, 24, 25]]), eos_id=1, pad_id=0)

    def one_pass():
        full_mask = torch.cat([mask, rollout.mask], dim=1)
        positions = (full_mask.cumsum(dim=1) - 1).clamp(min=0)
        logits = model(input_ids=torch.cat([ids, rollout.ids], dim=1), attention_mask=full_mask, position_ids=positions).logits
        return logits[:, ids.shape[1] - 1 : -1]

    results = []
    for compute in (one_pass, lambda: student_completion_logits(model, prompt_pass(model, ids, mask), rollout),
                    lambda: completion_logits(model, ids, mask, rollout)):
        model.zero_grad()
        logits = compute()
        (logits * rollout.mask[..., None]).pow(2).sum().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (reference, reference_grads), *others = results
    real = rollout.mask.bool()
    for logits, grads in others:
        torch.testing.assert_close(logits[real], reference[real], atol=1e-5, rtol=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference_grads[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("lora", [False, True])
def test_the_prompt_pass_is_shared_where_it_pays(tiny_model_dir, task, tmp_path, lora):
    """Full fine-tuning shares from SHARED_PROMPT_PASS_MIN_TOKENS prompt tokens on, LoRA always; forcing wins."""
    trainer = sdft_method.build_trainer(make_stage(tiny_model_dir, task, tmp_path, lora=lora))
    assert trainer.share_prompt_pass is None  # no dropout: decided per micro-batch
    few, many = 40, sdft_method.SHARED_PROMPT_PASS_MIN_TOKENS
    assert sdft_method._shares_prompt_pass(trainer, few) == lora
    assert sdft_method._shares_prompt_pass(trainer, many)
    trainer.share_prompt_pass = False
    assert not sdft_method._shares_prompt_pass(trainer, many)


def test_every_process_makes_the_same_prompt_pass_decision(tiny_model_dir, task, tmp_path, monkeypatch):
    """Under DDP every process must run as many forward passes as the others: the decision is the whole
    micro-batch's, even where this process's own rows alone would fall on the other side of the threshold."""
    from types import SimpleNamespace

    from sdft.methods.rollout import PreparedRow

    trainer = sdft_method.build_trainer(make_stage(tiny_model_dir, task, tmp_path, "train.gradient_accumulation=1"))
    everyone = [PreparedRow(row=None, student_ids=[5] * n, teacher_ids=[5]) for n in (10, 1, 10, 1)]
    trainer.stream = SimpleNamespace(next_batch=lambda size: everyone[:size])
    monkeypatch.setattr(sdft_method, "SHARED_PROMPT_PASS_MIN_TOKENS", 11)  # rank 0 alone has 20 tokens, rank 1 has 2
    decisions = []
    for rank in range(2):
        trainer.accelerator = SimpleNamespace(num_processes=2, process_index=rank)
        ((batch, share),) = sdft_method._my_micro_batches(trainer)
        assert batch == everyone[rank::2]
        decisions.append(share)
    assert decisions == [True, True]  # 22 tokens over 2 processes


@pytest.mark.parametrize("preallocated", [True, False])
def test_sampling_from_a_prompt_pass_leaves_its_cache_as_it_was(tiny_model_dir, monkeypatch, preallocated):
    """The prompt pass's cache is the student's training forward: the sampler copies it (or prefills its own)."""
    from sdft.generation import native as sampler

    if not preallocated:  # a cache of another kind (sliding windows, ...): the sampler cannot copy it
        monkeypatch.setattr(sampler, "_decoding_cache", lambda cache, capacity: None)
    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    cfg = load_config(None, ["train.max_completion_tokens=6"]).train
    ids, mask = left_pad([[5, 6, 7, 8, 9], [10, 11]], loaded.tokenizer.pad_token_id, torch.device("cpu"))
    prompt = prompt_pass(loaded.model, ids, mask)
    torch.manual_seed(0)
    shared = NativeBackend().sample(loaded.model, loaded.tokenizer, ids, mask, cfg.rollout, cfg.max_completion_tokens, prompt)
    assert prompt.cache.get_seq_length() == ids.shape[1]
    torch.manual_seed(0)
    assert torch.equal(NativeBackend().sample(loaded.model, loaded.tokenizer, ids, mask, cfg.rollout, cfg.max_completion_tokens).ids, shared.ids)
