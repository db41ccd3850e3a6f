"""The fault suite, part 1: mistakes in configs, command lines and model folders. Each case checks the exit code (1),
the one error line (and that nothing else was printed: these are refused before any work), no traceback, and what
survived (no run folder appears; the files named stay as they were).

Parts 2-4: test_faults_data.py (data files), test_faults_folders.py (run folders, resume, read-only and full disks),
test_faults_kill.py (kill -9 at every phase, damaged checkpoints and caches, a judge that hangs)."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from faults import invoke, make_world, refused, refused_alone, sdft_process, tree


@pytest.fixture
def world(tmp_path, tiny_model_dir):
    return make_world(tmp_path / "world", tiny_model_dir)


def nothing_written(root):
    assert not (root / "runs").exists(), "a refused command must not create a run folder"


# --- configs -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "# every line a comment\n\n"])
def test_an_empty_config_is_refused_not_run_on_the_defaults(tmp_path, text):
    config = tmp_path / "empty.yaml"
    config.write_text(text)
    refused_alone(invoke("train", config), "empty.yaml: the file is empty (no keys)")
    nothing_written(tmp_path)


@pytest.mark.parametrize("text, line, key", [
    ("seed: 1\nseed: 2\n", 2, "seed"),
    ("train:\n  steps: 3\n  learning_rate: 0.1\n  steps: 4\n", 4, "steps"),
    ("train: {steps: 3, steps: 4}\n", 1, "steps"),
])
def test_a_key_written_twice_is_refused_not_last_one_wins(tmp_path, text, line, key):
    config = tmp_path / "twice.yaml"
    config.write_text(text)
    refused_alone(invoke("train", config), f"twice.yaml: line {line}: key '{key}' is written twice")
    nothing_written(tmp_path)


def test_a_key_written_twice_in_an_override_value_is_refused(tmp_path):
    refused_alone(invoke("tasks", "--set", "train={steps: 1, steps: 2}"), "key 'steps' is written twice")


def test_a_binary_config_file_is_one_line(tmp_path):
    config = tmp_path / "photo.yaml"
    config.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    refused_alone(invoke("train", config), "photo.yaml: not a YAML text file")


def test_a_folder_given_as_the_config(tmp_path):
    (tmp_path / "configs").mkdir()
    refused_alone(invoke("train", tmp_path / "configs"), "is a folder, not a YAML file")


def test_a_yaml_syntax_error_names_its_line(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("train:\n  steps: 3\n  learning_rate: [1e-4\n")
    refused_alone(invoke("train", config), "broken.yaml: not valid YAML at line")


def test_a_python_tag_is_refused_not_run(tmp_path):
    config = tmp_path / "evil.yaml"
    config.write_text("seed: !!python/object/apply:os.system ['touch pwned']\n")
    refused_alone(invoke("train", config), "evil.yaml: not valid YAML")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("overrides", [["train.loss.alpha=2"], ["train.loss.divergence=reverse_kl", "train.loss.alpha=0"]])
def test_loss_alpha_out_of_range_is_refused_whatever_the_divergence(overrides):
    args = [a for o in overrides for a in ("--set", o)]
    refused_alone(invoke("tasks", *args), "alpha must be in (0, 1)")


def test_an_unknown_key_gets_a_did_you_mean(tmp_path):
    refused_alone(invoke("tasks", "--set", "train.lerning_rate=1e-4"), "did you mean 'train.learning_rate'")


def test_an_override_without_a_value(tmp_path):
    refused_alone(invoke("tasks", "--set", "train.steps"), "expected KEY=VALUE")


def test_a_custom_task_file_with_a_key_twice(world, tmp_path):
    task = world.parent / "doubling.yaml"
    task.write_text(task.read_text() + "scorer: exact\n")
    refused_alone(invoke("tasks", "--config", world), "doubling.yaml: line 5: key 'scorer' is written twice")


# --- model folders -------------------------------------------------------------------------------------------

@pytest.fixture
def broken_model(tmp_path, tiny_model_dir):
    def make(damage) -> str:
        folder = tmp_path / "model"
        shutil.copytree(tiny_model_dir, folder)
        damage(folder)
        return str(folder)
    return make


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize("damage, expected", [
    (lambda f: _edit_config(f, model_type="mine", auto_map={"AutoConfig": "configuration_mine.MineConfig"}),
     "ships its own Python code"),
    (lambda f: (f / "config.json").write_text("{not json"), "is not a valid JSON file"),
    (lambda f: (f / "config.json").write_bytes(b"\x00\xff" * 40), "is not a valid JSON file"),
    (lambda f: _edit_config(f, model_type="no-such-architecture"), "names a model type this transformers does not know"),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:500]),
     "its weights file is damaged or cut short"),
    (lambda f: (f / "model.safetensors").unlink(), "no file named model.safetensors"),
], ids=["remote-code", "config-not-json", "config-binary", "unknown-type", "weights-cut-short", "no-weights"])
def test_a_broken_model_folder_is_one_line(tmp_path, broken_model, damage, expected):
    model = broken_model(damage)
    refused_alone(invoke("eval", model, "--output", tmp_path / "out"), f"could not load model '{model}'", expected)
    assert tree(tmp_path / "out") == {}


def test_a_model_path_that_is_a_file(tmp_path, tiny_model_dir):
    model = tiny_model_dir / "config.json"
    refused_alone(invoke("eval", model, "--output", tmp_path / "out"), "is a file; name a model folder")


def test_a_folder_that_holds_no_model(tmp_path):
    (tmp_path / "empty-model").mkdir()
    refused_alone(invoke("eval", tmp_path / "empty-model", "--output", tmp_path / "out"), "holds no model")


def test_top_k_over_the_vocabulary_stops_before_the_model_loads(world, tmp_path, monkeypatch):
    from sdft import train_run

    monkeypatch.setattr(train_run, "load_model", lambda cfg: pytest.fail("the model was loaded"))
    refused_alone(invoke("train", world, "--set", "train.loss.top_k=100000", "--output", tmp_path / "run"),
                  "train.loss.top_k=100000 is larger than the model's vocabulary")
    assert not (tmp_path / "run").exists()


def test_the_dry_run_names_top_k_over_the_vocabulary(world):
    result = invoke("train", world, "--set", "train.loss.top_k=100000", "--dry-run")
    line = refused(result, "the dry run found 1 problem")
    assert "is larger than the model's vocabulary" in result.output and "is valid" not in result.output, line


# --- the network ---------------------------------------------------------------------------------------------

def test_offline_when_the_config_names_nothing_on_the_hub(world, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert invoke("tasks", "--config", world).exit_code == 0
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_a_hub_id_is_checked_not_taken_offline_for_granted(world, monkeypatch):
    from sdft import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    probed = []
    monkeypatch.setattr(hub, "_unreachable", lambda endpoint: probed.append(endpoint))
    assert invoke("tasks", "--config", world, "--set", "model.name_or_path=someorg/some-model").exit_code == 0
    assert probed and "HF_HUB_OFFLINE" not in os.environ  # the hub answered: online


@pytest.mark.slow
def test_a_hub_id_without_a_network_is_one_line_in_seconds(tmp_path):
    """The hub cannot be reached (HF_ENDPOINT points at a closed port) and nothing is cached (an empty HF_HOME): one
    line within seconds, not minutes of retry messages."""
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf-home")}
    started = time.monotonic()
    result = sdft_process(["eval", "someorg/some-model", "--limit", "1", "--output", tmp_path / "out"], tmp_path, env=env)
    refused_alone(result, "could not load model 'someorg/some-model'", "the hub cannot be reached")
    assert time.monotonic() - started < 30
