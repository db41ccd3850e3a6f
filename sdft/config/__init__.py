"""Every knob of the toolkit, as dataclasses: the one home of every default. Imports no torch.

- sections.py: model, lora, sampling (shared by evaluation and rollouts), eval, harness, check, task sources
- judge.py:    the LLM judge's knobs
- training.py: train (one stage, its loss, its teacher and rollouts) and sequence
- ttt.py:      test-time training on few-shot instances (`sdft ttt`)
- collm.py:    Co-LLM: the expert, the deferral head's training, the threshold (`sdft collm`)
- seal.py:     SEAL's self-edits, inner updates and ReST-EM rounds (`sdft seal`)
- root.py:     Config (the whole), its cross-section checks, load_config
- mapping.py:  strict conversion of YAML mappings and `a.b=value` overrides into the dataclasses
- renamed.py:  keys of older configs, each answered with one line naming its new key

YAML files and `--set a.b=value` overrides only change fields declared here. Loading is strict: an unknown
key fails with a did-you-mean (or the key it was renamed to), a wrong type names the key and the file, and
contradictory settings fail in `Config.validate()` before any model is loaded. New systems add their own
section here.
"""

from sdft.config.collm import CollmConfig
from sdft.config.judge import JudgeConfig
from sdft.config.root import Config, config_to_dict, load_config
from sdft.config.sections import (EMBEDDED_MODEL, EMBEDDED_PRIOR_SKILLS, EMBEDDED_TASKS, CheckConfig, EvalConfig,
                                  HarnessConfig, LoraConfig, ModelConfig, SamplingConfig, TaskSourceConfig)
from sdft.config.training import (DIVERGENCES, METHOD_NAMES, TOPK_SOURCES, LossConfig, ReinvokeConfig, SequenceConfig,
                                  TrainConfig, vocabulary_problems)
from sdft.config.seal import TEMPLATE_NAMES, SealConfig
from sdft.config.ttt import PREDICTOR_NAMES, TTTConfig

__all__ = [
    "Config", "config_to_dict", "load_config", "ModelConfig", "LoraConfig", "SamplingConfig", "HarnessConfig",
    "EvalConfig", "CheckConfig", "TaskSourceConfig", "JudgeConfig", "LossConfig", "ReinvokeConfig", "TrainConfig",
    "SequenceConfig", "TTTConfig", "CollmConfig", "PREDICTOR_NAMES", "SealConfig", "TEMPLATE_NAMES",
    "EMBEDDED_MODEL", "EMBEDDED_TASKS", "EMBEDDED_PRIOR_SKILLS", "METHOD_NAMES", "DIVERGENCES", "TOPK_SOURCES",
    "vocabulary_problems",
]
