"""The fault suite, part 3: run folders. A run only writes into a folder it may write (new, empty, or its own earlier
run under a config that changes no result), decides that before writing anything, and leaves every file of a folder
it refuses as it was. Read-only folders are refused up front; a full disk stops a run in one line, keeps what was
finished, and the same command continues once there is room."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from faults import Mounts, invoke, make_world, read_json, refused, refused_alone, tree
from sdft.config import config_to_dict, load_config


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    return make_world(tmp_path_factory.mktemp("folders") / "world", tiny_model_dir)


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory):
    """A finished 4-step train run of the world (the slow cases continue copies of it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    result = invoke("train", world, "--output", run)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def run(world, tmp_path):
    """What a train run folder holds for the guards to look at (the fast cases refuse it before any work)."""
    from sdft.runs import write_run_header

    run = tmp_path / "run"
    write_run_header(run, load_config(world), "train", "cpu")
    (run / "results.json").write_text('{"after": {"doubling": 0.5}}\n')
    (run / "checkpoints" / "step-000004").mkdir(parents=True)
    (run / "checkpoints" / "step-000004" / "student.safetensors").write_bytes(b"weights")
    return run


@pytest.fixture
def mounts(tmp_path):
    mounted = Mounts(tmp_path)
    yield mounted
    mounted.unmount_all()


# --- a new run needs a folder of its own ---------------------------------------------------------------------

@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_new_run_into_a_finished_run_is_refused_and_changes_nothing(world, run, command):
    before = tree(run)
    args = ["train", world] if command == "train" else ["eval", "--config", world]
    line = refused_alone(invoke(*args, "--output", run), "already holds a `sdft train` run")
    assert ("pass --resume to continue it" in line) == (command == "train")
    assert tree(run) == before


def test_a_new_run_into_a_folder_of_other_files_is_refused(world, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes")
    refused_alone(invoke("eval", "--config", world, "--output", tmp_path / "mine"), "is not empty (notes.txt)")
    assert tree(tmp_path / "mine") == {"notes.txt": tree(tmp_path / "mine")["notes.txt"]}


def test_output_that_is_a_file(world, tmp_path):
    (tmp_path / "results.txt").write_text("keep me")
    refused_alone(invoke("eval", "--config", world, "--output", tmp_path / "results.txt"), "is a file; name a folder")
    assert (tmp_path / "results.txt").read_text() == "keep me"


def test_output_below_a_file(world, tmp_path):
    (tmp_path / "results.txt").write_text("keep me")
    refused_alone(invoke("eval", "--config", world, "--output", tmp_path / "results.txt" / "run"), "is a file")


def test_an_attempt_that_did_nothing_is_taken_over(world, tmp_path, tiny_model_dir):
    """A first eval failed to load its model after writing only its header; the same command then runs there."""
    (tmp_path / "gone").mkdir()
    result = invoke("eval", "--config", world, "--set", f"model.name_or_path={tmp_path / 'gone'}", "--output", tmp_path / "e")
    refused(result, "holds no model")
    result = invoke("eval", "--config", world, "--output", tmp_path / "e", "--limit", 1)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e" / "results.json").is_file()


def test_two_default_run_folders_of_the_same_second_do_not_collide(tmp_path):
    from sdft.claim import claim_new

    cfg = load_config(None, [f"output_root={tmp_path}"])
    first = claim_new(None, "eval", cfg).run_dir
    first.mkdir(parents=True)
    second = claim_new(None, "eval", cfg).run_dir
    assert second != first and (second.name == first.name + "-2" or second.name[:15] != first.name[:15])


# --- resume: only a run of this command, only under a config that changes no result ----------------------------

def test_resume_on_a_folder_that_is_not_a_run_writes_nothing(world, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text("my: own file\n")
    before = tree(folder)
    refused_alone(invoke("train", world, "--output", folder, "--resume"), "nothing to resume", "holds no sdft run")
    assert tree(folder) == before


def test_resume_on_a_missing_folder(world, tmp_path):
    refused_alone(invoke("train", world, "--output", tmp_path / "nowhere", "--resume"), "does not exist")
    assert not (tmp_path / "nowhere").exists()


def test_resume_on_another_commands_run(world, tmp_path):
    result = invoke("eval", "--config", world, "--output", tmp_path / "e", "--limit", 1)
    assert result.exit_code == 0, result.output
    before = tree(tmp_path / "e")
    refused_alone(invoke("train", world, "--output", tmp_path / "e", "--resume"), "holds a `sdft eval` run")
    assert tree(tmp_path / "e") == before


def test_resume_under_a_config_that_changes_the_result_names_every_key(world, run):
    before = tree(run)
    line = refused_alone(invoke("train", world, "--output", run, "--resume", "--set", "train.task=science",
                                "--set", "train.learning_rate=0.02", "--set", "train.loss.divergence=reverse_kl"),
                         "cannot continue the run in", "train.learning_rate (0.01 -> 0.02)",
                         "train.loss.divergence ('forward_kl' -> 'reverse_kl')", "train.task ('doubling' -> 'science')")
    assert "train.log_every" not in line
    assert tree(run) == before


@pytest.mark.slow
def test_resume_under_logging_changes_continues_and_keeps_the_first_env(world, finished, tmp_path):
    run = shutil.copytree(finished, tmp_path / "run")
    first_env, first_results = read_json(run / "env.json"), read_json(run / "results.json")
    result = invoke("train", world, "--output", run, "--resume", "--set", "train.log_every=3",
                    "--set", "eval.batch_size=2")
    assert result.exit_code == 0, result.output
    env = read_json(run / "env.json")
    assert {k: env[k] for k in first_env} == first_env and len(env["resumed"]) == 1
    assert load_config(run / "config.yaml").train.log_every == 3  # the folder says what ran last
    assert read_json(run / "results.json")["after"] == first_results["after"]


@pytest.mark.slow
def test_resume_before_the_first_checkpoint_starts_over(world, finished, tmp_path, monkeypatch):
    from sdft import train_run

    def stopped(stage):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_run, "train_stage", stopped)
    assert invoke("train", world, "--output", tmp_path / "r").exit_code == 130
    monkeypatch.undo()
    assert not (tmp_path / "r" / "checkpoints").exists() and not (tmp_path / "r" / "results.json").exists()
    result = invoke("train", world, "--output", tmp_path / "r", "--resume")
    assert result.exit_code == 0, result.output
    assert read_json(tmp_path / "r" / "results.json")["after"] == read_json(finished / "results.json")["after"]


def test_a_sequence_into_a_train_run_is_refused(world, run):
    before = tree(run)
    refused_alone(invoke("sequence", "--config", world, "--output", run), "already holds a `sdft train` run")
    assert tree(run) == before


def test_a_sequence_folder_under_another_config_names_the_keys(world, tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    (folder / "env.json").write_text(json.dumps({"command": "sequence"}))
    other = load_config(world, ["train.learning_rate=0.5", "sequence.seeds=[3]"])
    (folder / "config.yaml").write_text(json.dumps(config_to_dict(other)))  # JSON is YAML
    before = tree(folder)
    line = refused_alone(invoke("sequence", "--config", world, "--output", folder), "train.learning_rate (0.5 -> 0.01)")
    assert "sequence.seeds" not in line  # other seeds only add chains
    assert tree(folder) == before


# --- read-only folders and full disks ------------------------------------------------------------------------

def read_only_folder(mounts: Mounts, tmp_path) -> "os.PathLike":
    """A folder nobody can write: a read-only tmpfs as root (who ignores permissions), else mode 0o555."""
    if os.geteuid() == 0:
        return mounts.tmpfs("ro", "ro,size=64k")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_a_read_only_output_is_refused_before_anything(world, tmp_path, mounts):
    folder = read_only_folder(mounts, tmp_path)
    refused_alone(invoke("eval", "--config", world, "--output", folder / "run"), "is read-only or not yours")
    assert tree(folder) == {}


def test_a_read_only_cache_folder_is_refused_before_anything(world, tmp_path, mounts):
    folder = read_only_folder(mounts, tmp_path)
    refused_alone(invoke("eval", "--config", world, "--set", f"output_root={folder}", "--output", tmp_path / "e"),
                  "cannot write output_root", "eval.cache=false")
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_keeps_the_run_and_resume_finishes_it(world, finished, tmp_path, mounts):
    disk = mounts.tmpfs("small", "size=64k")  # the header fits, a checkpoint (about 300 KB) does not
    line = refused(invoke("train", world, "--output", disk / "run"), "checkpoints/step-000002: the disk is full")
    assert "--resume" in line
    assert load_config(disk / "run" / "config.yaml") == load_config(finished / "config.yaml")
    assert not any(p.name.endswith(".tmp") for p in (disk / "run").rglob("*")) and not (disk / "run" / "results.json").exists()
    mounts.remount(disk, "size=16m")  # room again
    result = invoke("train", world, "--output", disk / "run", "--resume")
    assert result.exit_code == 0, result.output
    assert read_json(disk / "run" / "results.json")["after"] == read_json(finished / "results.json")["after"]


@pytest.mark.slow
def test_a_full_disk_while_writing_results_leaves_no_half_file(world, tmp_path, mounts):
    disk = mounts.tmpfs("tiny", "size=8k")  # two pages: env.json and config.yaml, nothing more
    refused(invoke("eval", "--config", world, "--output", disk / "run"), f"cannot write {disk / 'run'}", "the disk is full")
    assert sorted(tree(disk / "run")) == ["config.yaml", "env.json"]  # whole files, no temporary left behind
    assert load_config(disk / "run" / "config.yaml").tasks == ["doubling"] and read_json(disk / "run" / "env.json")
    mounts.remount(disk, "size=1m")  # room again: the same command, into the same folder
    result = invoke("eval", "--config", world, "--output", disk / "run")
    assert result.exit_code == 0, result.output
    assert read_json(disk / "run" / "results.json")["scores"]["doubling"]["n"] == 4
