"""Killed runs: `kill -9` in the middle of training, then the same command again, resumes and loses nothing."""

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, save_tiny_checkpoint, save_tiny_text_checkpoint, write_reviews_csv

from hftransfer import outputs, resume


def command(checkpoint, folders, out, *extra):
    return [sys.executable, str(ROOT / "recipes" / "image.py"), "--model_name_or_path", str(checkpoint),
            "--train_dir", str(folders[0]), "--validation_dir", str(folders[1]), "--output_dir", str(out),
            "--save_strategy", "steps", "--save_steps", "20", "--head_epochs", "30", "--num_train_epochs", "30",
            "--per_device_train_batch_size", "4", "--disable_tqdm", "true", *extra]


def run(args, caplog=None):
    """The command run to its end in this process (only a killed run needs a process of its own: this saves the 6 s
    of imports a process pays); the log it wrote."""
    from hftransfer.recipe import main

    with caplog.at_level(logging.INFO, logger="hftransfer") if caplog else contextlib.nullcontext():
        main(Path(args[1]).stem, args[2:])  # recipes/image.py or recipes/text.py
    return caplog.text if caplog else ""


def kill_when(args, ready, timeout=300):
    """Start the command and SIGKILL it as soon as `ready()` holds."""
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not ready():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from conftest import make_image_folder

    root = tmp_path_factory.mktemp("resume")
    checkpoint = save_tiny_checkpoint(root / "ckpt", "mobilenet_v2")
    folders = (make_image_folder(root / "train", 12, seed=0), make_image_folder(root / "validation", 4, seed=1))
    reference = root / "reference"
    run(command(checkpoint, folders, reference))
    return checkpoint, folders, json.loads((reference / "hftransfer_run.json").read_text()), \
        json.loads((reference / "all_results.json").read_text())


def kept_epochs(record):
    return [(s["metrics"]["best_epoch"], s["metrics"]["last_evaluated_epoch"]) for s in record["stages"]]


def losses(record):
    return [[entry["loss"] for entry in stage["log"] if "loss" in entry] for stage in record["stages"]]


def test_plain_rerun_after_kill_in_stage_two_resumes_and_loses_no_step(setup, tmp_path, caplog):
    checkpoint, folders, reference, reference_results = setup
    out = tmp_path / "out"
    kill_when(command(checkpoint, folders, out), lambda: resume.complete_checkpoints(out / "stage-staged"))
    assert (out / "stage-head" / "completed.json").is_file()  # stage 1 had finished
    assert not (out / "model.safetensors").exists() and not (out / "all_results.json").exists()  # nothing half-done
    finished = json.loads((out / "stage-head" / "completed.json").read_text())
    finished["metrics"]["train_runtime"] = 1000.0  # what the killed process spent on the head, made unmistakable
    (out / "stage-head" / "completed.json").write_text(json.dumps(finished))

    log = run(command(checkpoint, folders, out), caplog)
    assert "Stage 'head' was finished by an earlier run" in log and "Resuming stage 'staged' from" in log
    record = json.loads((out / "hftransfer_run.json").read_text())
    # every logged epoch once, none lost, none repeated; and the same training as the uninterrupted run
    # early stopping and the kept epoch pick up where the killed run was (`selection.BestEpoch.on_train_begin`)
    assert [len(s) for s in losses(record)] == [len(s) for s in losses(reference)]
    assert kept_epochs(record) == kept_epochs(reference)
    assert losses(record)[0] == losses(reference)[0]
    # the epoch cut by the kill logs the mean loss of its steps after the checkpoint only; all others are the same
    differing = [a for a, b in zip(losses(record)[1], losses(reference)[1]) if a != pytest.approx(b, rel=0.01)]
    assert len(differing) <= 1
    assert losses(record)[1][-1] == pytest.approx(losses(reference)[1][-1], rel=0.01)
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] == pytest.approx(reference_results["eval_accuracy"], abs=0.1)
    assert not (out / outputs.STAGING).exists()
    # both times count the head the killed process trained (the total was this process's alone: "train 1004 s,
    # total 9 s")
    assert 1000 < results["train_runtime"] < results["total_runtime"] < 1000 + 600


def test_resume_from_a_named_checkpoint_of_the_cached_head_stage(setup, tmp_path, caplog):
    checkpoint, folders, reference, _ = setup
    out = tmp_path / "out"
    kill_when(command(checkpoint, folders, out), lambda: len(resume.complete_checkpoints(out / "stage-head")) >= 2)
    named = resume.complete_checkpoints(out / "stage-head")[-1]  # the oldest complete one, to show it is the one used
    log = run(command(checkpoint, folders, out, "--resume_from_checkpoint", str(named)), caplog)
    assert f"Resuming stage 'head' from {named}" in log
    record = json.loads((out / "hftransfer_run.json").read_text())
    assert [len(s) for s in losses(record)] == [len(s) for s in losses(reference)]
    assert kept_epochs(record) == kept_epochs(reference)
    assert losses(record)[0][-1] == pytest.approx(losses(reference)[0][-1], rel=0.01)


@pytest.mark.long
def test_a_resumed_text_run_draws_its_length_grouped_batches_as_the_uninterrupted_run(tmp_path, caplog):
    """Text batches are grouped by length in an order drawn per epoch; a resumed run must not restart that order."""
    checkpoint = save_tiny_text_checkpoint(tmp_path / "ckpt", "bert")
    reviews = write_reviews_csv(tmp_path / "reviews.csv")

    def text_command(out):
        return [sys.executable, str(ROOT / "recipes" / "text.py"), "--model_name_or_path", str(checkpoint),
                "--train_file", str(reviews), "--output_dir", str(out), "--save_strategy", "epoch", "--head_epochs",
                "2", "--num_train_epochs", "10", "--early_stopping_patience", "10", "--per_device_train_batch_size",
                "4", "--rdrop_weight", "0", "--adversarial_epsilon", "0", "--disable_tqdm", "true"]

    run(text_command(tmp_path / "reference"))
    reference = json.loads((tmp_path / "reference" / "hftransfer_run.json").read_text())
    assert reference["chosen"]["train_sampling_strategy"]["value"] == "group_by_length"
    out = tmp_path / "out"
    kill_when(text_command(out), lambda: resume.complete_checkpoints(out / "stage-staged"))
    log = run(text_command(out), caplog)
    assert "Resuming stage 'staged' from" in log
    record = json.loads((out / "hftransfer_run.json").read_text())
    # killed between epochs: every epoch's loss is the uninterrupted run's, those after the checkpoint included
    assert losses(record) == [pytest.approx(stage, rel=1e-5) for stage in losses(reference)]


def test_restart_ignores_an_interrupted_run(setup, tmp_path, caplog):
    checkpoint, folders, _, _ = setup
    out = tmp_path / "out"
    kill_when(command(checkpoint, folders, out), lambda: resume.complete_checkpoints(out / "stage-head"))
    log = run(command(checkpoint, folders, out, "--restart"), caplog)
    assert "Resuming" not in log and "finished by an earlier run" not in log
    assert (out / "all_results.json").is_file()


def test_only_the_same_command_gets_its_finished_stages_back(setup, tmp_path, caplog):
    """An output folder reused by another command (here another learning rate; another checkpoint or other data
    alike) must not hand that command the earlier run's finished stages: it trains, and the old stages go."""
    checkpoint, folders, _, _ = setup
    out = tmp_path / "out"
    quick = ("--head_epochs", "1", "--num_train_epochs", "1", "--save_strategy", "epoch")
    run(command(checkpoint, folders, out, *quick))
    caplog.clear()
    log = run(command(checkpoint, folders, out, *quick, "--learning_rate", "5e-4"), caplog)
    assert "written by another command (it differs in learning_rate (" in log
    assert "finished by an earlier run" not in log
    assert json.loads((out / "hftransfer_run.json").read_text())["settings"]["learning_rate"] == 5e-4
    caplog.clear()
    # the same command again, its data folders given relative to here, evaluated in other batches
    relative = [Path(os.path.relpath(folder)) for folder in folders]
    log = run(command(checkpoint, relative, out, *quick, "--learning_rate", "5e-4", "--per_device_eval_batch_size",
                      "3"), caplog)
    assert "written by another command" not in log
    assert log.count("finished by an earlier run") == 2  # both stages come back


def test_a_failed_save_leaves_no_half_written_output(tmp_path, image_folders, monkeypatch):
    from hftransfer.args import parse_args
    from hftransfer.tasks import ImageTask
    from hftransfer.training import TransferRun

    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "mobilenet_v2")
    out = tmp_path / "out"
    run_args = parse_args(["--model_name_or_path", str(checkpoint), "--train_dir", str(image_folders[0]),
                           "--validation_dir", str(image_folders[1]), "--output_dir", str(out), "--strategy",
                           "feature_extraction", "--head_epochs", "1", "--disable_tqdm", "true"])

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the card")

    monkeypatch.setattr("hftransfer.card.write_card", crash)
    with pytest.raises(KeyboardInterrupt):
        TransferRun(run_args, ImageTask(run_args.data)).execute()
    assert not any(p.is_file() for p in out.iterdir()) if out.exists() else True  # only the staging folder


def test_a_checkpoint_whose_weights_were_damaged_since_is_passed_over_and_a_damaged_stage_is_an_error(tmp_path,
                                                                                                      caplog):
    """Weights cut short after they were written (a full disk while copying, a damaged file): the newest checkpoint
    was resumed from anyway and the run ended in a SafetensorError traceback, as did a finished stage's weights."""
    import torch
    from safetensors.torch import save_file

    from hftransfer.anatomy import ModelError

    stage = tmp_path / "stage-staged"
    for step in (10, 20):
        (stage / f"checkpoint-{step}").mkdir(parents=True)
        save_file({"weight": torch.ones(64)}, stage / f"checkpoint-{step}" / "model.safetensors")
        (stage / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert resume.complete_checkpoints(stage) == [stage / "checkpoint-20", stage / "checkpoint-10"]
    damaged = stage / "checkpoint-20" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-40])
    with caplog.at_level(logging.WARNING):
        assert resume.complete_checkpoints(stage) == [stage / "checkpoint-10"]
    assert f"{damaged} cannot be read" in caplog.text

    model = torch.nn.Linear(8, 8)
    resume.mark_completed(model, stage, {"stage": "staged"})
    assert resume.restore_completed(model, stage) == {"stage": "staged"}
    weights = stage / outputs.COMPLETED_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-40])
    with pytest.raises(ModelError, match=f"{weights}: the saved stage cannot be read .*run with --restart"):
        resume.restore_completed(model, stage)


def test_a_named_checkpoint_of_a_finished_stage_is_resumed_from_not_passed_over(setup, tmp_path, caplog):
    """Every stage finished: the named checkpoint was ignored in silence, each stage restored (and with a changed
    command, the finished stage of the other command came back)."""
    import shutil

    checkpoint, folders, _, _ = setup
    out = tmp_path / "out"
    run(command(checkpoint, folders, out))
    named = resume.complete_checkpoints(out / "stage-staged")[-1]
    shutil.rmtree(out / "stage-head" / "checkpoint-20", ignore_errors=True)  # the head stage: restored whole
    log = run(command(checkpoint, folders, out, "--resume_from_checkpoint", str(named)), caplog)
    assert "Stage 'head' was finished by an earlier run" in log
    assert f"Resuming stage 'staged' from {named}" in log and "Stage 'staged' was finished" not in log

    # named by a command that differs (other data, other settings): it was resumed, over the head stage retrained
    # on this command's data, and the log called it "an earlier run of this command"
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(SystemExit, match=rf"^error: --resume_from_checkpoint {named}: written by another command "
                                         r"\(it differs in learning_rate .*0.05\)"):
        run(command(checkpoint, folders, out, "--resume_from_checkpoint", str(named), "--learning_rate", "0.05"))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing removed



def test_only_data_weights_or_a_setting_both_records_hold_tell_another_command():
    """A record an older hftransfer wrote (a setting fewer) is the same command: its named checkpoint is resumed."""
    new = {"settings": {"learning_rate": 1e-4, "new_flag": 1}, "data": {"train": "abc"}, "weights": "w"}
    assert not resume._differs_in_common({**new, "settings": {"learning_rate": 1e-4}}, new)
    assert resume._differs_in_common({**new, "settings": {"learning_rate": 5e-2}}, new)
    assert resume._differs_in_common({**new, "data": {"train": "abd"}}, new)
