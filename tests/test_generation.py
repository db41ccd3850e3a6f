"""The generation interface: both backends give the same generations (greedy, and sampled under a seed), records
carry ids, text, the cap flag and (native) log-probs that match a teacher-forced forward pass."""

from __future__ import annotations

import pytest
import torch

from sdft.config import ModelConfig, SamplingConfig
from sdft.generation import generate_texts
from sdft.models import load_model
from sdft.prompts import render_prompt

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["What is 2 + 2?", "Name a colour.", "Spell cat backwards, then say why it matters in a few words."]


@pytest.fixture
def loaded(tiny_model_dir):
    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    eos = loaded.tokenizer.eos_token_id  # make the eos token likely, so some rows end before the cap and some do not
    loaded.model.lm_head.register_forward_hook(lambda m, i, out: out + 3.0 * (torch.arange(out.shape[-1]) == eos))
    return loaded


def generations(loaded, sampling, samples=1, seed=0, logprobs=False):
    prompts = [render_prompt(loaded.tokenizer, p) for p in PROMPTS]
    out = {}
    for indices, per_prompt in generate_texts(loaded, prompts, sampling, 12, samples, batch_size=2, seed=seed,
                                              logprobs=logprobs):
        out.update(zip(indices, per_prompt))
    return [out[i] for i in range(len(PROMPTS))]


@pytest.mark.parametrize("temperature, top_p", [(0.0, 1.0), (1.0, 1.0), (0.8, 0.9)])
def test_both_backends_generate_the_same_tokens(loaded, temperature, top_p):
    hf = generations(loaded, SamplingConfig(temperature, top_p, "hf"), samples=2)
    native = generations(loaded, SamplingConfig(temperature, top_p, "native"), samples=2)
    assert [[(g.token_ids, g.text, g.hit_cap) for g in row] for row in hf] == \
           [[(g.token_ids, g.text, g.hit_cap) for g in row] for row in native]
    flat = [g for row in hf for g in row]
    assert any(g.hit_cap for g in flat) or all(g.token_ids[-1] == loaded.tokenizer.eos_token_id for g in flat)
    for g in flat:
        assert g.hit_cap == (len(g.token_ids) == 12 and g.token_ids[-1] != loaded.tokenizer.eos_token_id)


def test_native_log_probs_are_the_models_own(loaded):
    (first, *_), *_ = generations(loaded, SamplingConfig(1.0, 1.0, "native"), logprobs=True)
    prompt = loaded.tokenizer(render_prompt(loaded.tokenizer, PROMPTS[0]), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + first.token_ids])
    with torch.no_grad():
        logp = loaded.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
    expected = logp.gather(1, torch.tensor(first.token_ids)[:, None]).squeeze(1)
    torch.testing.assert_close(torch.tensor(first.logprobs), expected, atol=1e-5, rtol=1e-5)
    assert generations(loaded, SamplingConfig(1.0, 1.0, "hf"), logprobs=True)[0][0].logprobs is None  # hf has none
