import json
import re
import types

import pytest
from conftest import save_tiny_checkpoint, save_tiny_text_checkpoint
from support.hub_server import TOKEN, USER, local_hub  # noqa: F401 - a fixture

from hftransfer import cli


@pytest.fixture
def hftransfer(capsys):
    """The command line in this process (a subprocess would spend 6 s a call importing torch and transformers):
    its exit status, standard output, and standard error with the exit message."""
    def run(*args):
        code, message = 0, ""
        try:
            cli.main(list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
            message = exit_.code if isinstance(exit_.code, str) else ""
        out, err = capsys.readouterr()
        return types.SimpleNamespace(returncode=code, stdout=out, stderr=err + message)

    return run


def test_freeze_report_without_training(tmp_path, hftransfer):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "vit")
    done = hftransfer("freeze-report", str(checkpoint), "--strategy", "fine_tune", "--unfreeze_last_n", "1",
                      "--json")
    assert done.returncode == 0, done.stderr
    assert "strategy=fine_tune" in done.stdout and "base.block.3" in done.stdout
    plan = json.loads(done.stdout[done.stdout.index("{"):])["plan"]
    assert all(n.startswith(("vit.layers.3.", "vit.encoder.layer.3.", "vit.layernorm", "classifier"))
               for n in plan["trainable"])
    (tmp_path / "freeze_plan.json").write_text(json.dumps(plan))
    again = hftransfer("freeze-report", str(checkpoint), "--plan", str(tmp_path / "freeze_plan.json"))
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == done.stdout.split("\n{")[0].splitlines()[-1]


def test_a_plan_that_cannot_be_read_is_an_error_naming_the_file(tmp_path, hftransfer):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "vit")
    for content, reason in [(None, "FileNotFoundError"), ("{bad", "JSONDecodeError"), ("[]", "TypeError"),
                            ('{"strategy": "fine_tune", "unknown_key": 1}', "TypeError")]:
        plan = tmp_path / "plan.json"
        plan.unlink(missing_ok=True)
        if content is not None:
            plan.write_text(content)
        done = hftransfer("freeze-report", str(checkpoint), "--plan", str(plan))
        assert done.returncode == 1 and f"error: {plan}: not a freeze plan" in done.stderr and \
            reason in done.stderr, done.stderr


def test_freeze_report_names_the_nearest_parameters(tmp_path, hftransfer):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "mobilenet_v2")
    done = hftransfer("freeze-report", str(checkpoint), "--unfreeze", "mobilenet_v2.layers.*")
    assert done.returncode != 0 and "matches no parameter" in done.stderr and "mobilenet_v2.layer" in done.stderr


def test_freeze_report_refuses_what_training_refuses(tmp_path, hftransfer):
    """It showed plans training refuses: --unfreeze_last_n -1 as blocks 1 to 5 (a Python slice), --layer_lr_decay -1
    as rates of alternating sign, a freeze of everything as 0 trainable with exit 0; a regex too large for `re`
    was an OverflowError traceback."""
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "vit")
    for flags, says in [(("--strategy", "fine_tune", "--unfreeze_last_n", "-1"), "expected a whole number, 0 or more"),
                        (("--strategy", "full", "--layer_lr_decay", "-1"), "expected a number, more than 0"),
                        (("--strategy", "full", "--layer_lr_decay", "nan"), "expected a number, more than 0"),
                        (("--freeze", "re:a{99999999999}"), "is not a valid regular expression"),
                        (("--strategy", "full", "--freeze", "re:.*"), "would train 0 parameters")]:
        done = hftransfer("freeze-report", str(checkpoint), *flags)
        assert done.returncode != 0 and says in done.stderr, (flags, done.stderr)
    for port in ("0", "99999"):  # an OverflowError traceback once the model had loaded
        done = hftransfer("demo", str(checkpoint), "--port", port)
        assert done.returncode == 2 and "expected a port from 1 to 65535" in done.stderr


def test_zoo_list_and_prepare(mobilenet_zoo, hftransfer):
    listed = hftransfer("zoo", "list")
    assert listed.returncode == 0 and "zoo:mobilenet_v2" in listed.stdout and "built" in listed.stdout
    prepared = hftransfer("zoo", "prepare", "mobilenet_v2")
    assert prepared.stdout.strip() == str(mobilenet_zoo)


def test_a_model_that_is_not_there_is_an_error_naming_it_in_every_command(tmp_path, hftransfer, local_hub):  # noqa: F811
    """A path that is no folder (transformers would call it a malformed Hub id), a file, a folder with nothing saved,
    a config without a model type, an unknown zoo name, a malformed Hub id, a Hub repository that does not exist, and
    a config no task classifies: an exit message that names what was given, no traceback, and nothing published
    (`publish-space` wrote a missing path into the Space as a Hub id, and published a Space for a model the Hub does
    not have)."""
    from transformers import WhisperConfig

    from hftransfer.anatomy import ModelError
    from hftransfer.demo import serve

    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("")
    WhisperConfig().save_pretrained(tmp_path / "speech")
    (tmp_path / "no-type").mkdir()
    (tmp_path / "no-type" / "config.json").write_text("{}")
    says = {"missing": "not a folder", "a-file": "not a folder", "empty": "no config.json in this folder",
            f"{USER}/no-such-model": "no-such-model", "speech": "WhisperConfig is a classifier of none of the tasks",
            "no-type": "model_type", "zoo:nope": "Unknown zoo entry", "a/b/c": "Repo id must be in the form"}
    checked_first = {("freeze-report", "speech"): "no safetensors weights",  # before the config, as a run does
                     ("freeze-report", "no-type"): "no safetensors weights",
                     ("publish-space", "speech"): "config.json has no", ("publish-space", "no-type"): "Not publishing",
                     ("publish-space", f"{USER}/no-such-model"): "no such model on the Hub"}
    texts = tmp_path / "texts.csv"
    texts.write_text("text\nfine\n")
    for name, expected in says.items():
        model = name if ":" in name or "/" in name else str(tmp_path / name)
        for command in (["predict", model, str(texts), "--output", str(tmp_path / "out.csv")],
                        ["export", model, "--output", str(tmp_path / "exported")], ["freeze-report", model],
                        ["publish-space", "--model", model, "--space_id", "demo", "--hub_token", TOKEN]):
            done = hftransfer(*command)
            first_line = done.stderr.splitlines()[0] if done.stderr else ""
            assert done.returncode == 1 and first_line.startswith("error: ") and model in first_line, (command, done)
            assert checked_first.get((command[0], name), expected) in done.stderr, (command, done.stderr)
            assert "Traceback" not in done.stderr + done.stdout
        with pytest.raises(ModelError, match=re.escape(expected)):  # `hftransfer demo` restarts its process: in
            serve(model)  # here, what it runs
    assert not [repo for repo in local_hub.repos if repo.startswith("spaces/")]
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "exported").exists()


def test_a_text_model_without_its_tokenizer_files_is_an_error_not_one_answer_for_every_text(tmp_path, hftransfer):
    """transformers loads the folder's tokenizer anyway, with the special tokens alone: `predict` read every text as
    [UNK] and wrote the same scores for each, and `export` checked its graph on those."""
    from hftransfer.anatomy import ModelError
    from hftransfer.demo import serve

    model = save_tiny_text_checkpoint(tmp_path / "model", "bert")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink()
    texts = tmp_path / "texts.csv"
    texts.write_text("text\na wonderful film\na dull mess\n")
    says = f"The tokenizer of {model} has no tokens but its 5 special ones"
    for command in (["predict", str(model), str(texts), "--output", str(tmp_path / "out.csv")],
                    ["export", str(model), "--output", str(tmp_path / "exported")]):
        done = hftransfer(*command)
        assert done.returncode == 1 and says in done.stderr and "Traceback" not in done.stderr, (command, done)
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "exported").exists()
    with pytest.raises(ModelError, match=re.escape(says)):
        serve(str(model))


def test_a_record_cut_short_in_an_output_folder_is_an_error_naming_it(tmp_path, hftransfer):
    """hftransfer_run.json cut short (a full disk, a killed copy): `card`, `predict` and `export` ended in a
    JSONDecodeError traceback."""
    from hftransfer.demo import serve
    from hftransfer.outputs import RUN_RECORD, OutputFolderError

    model = save_tiny_checkpoint(tmp_path / "model", "vit")
    record = model / RUN_RECORD
    texts = tmp_path / "texts.csv"
    texts.write_text("text\nfine\n")
    # cut short; then JSON of another shape (a KeyError or AttributeError in the card and the demo)
    for content, says in [('{"settings": {"model_name_or_pa', "not a JSON record hftransfer can read"),
                          ("{}", "JSON, but not the run record hftransfer writes"),
                          ('{"settings": [], "stages": "x"}', "JSON, but not the run record hftransfer writes")]:
        record.write_text(content)
        says = f"{record}: {says}"
        for command in (["card", str(model)],
                        ["predict", str(model), str(texts), "--output", str(tmp_path / "out.csv")],
                        ["export", str(model), "--output", str(tmp_path / "exported")]):
            done = hftransfer(*command)
            assert done.returncode == 1 and f"error: {says}" in done.stderr, (command, done)
        assert not (tmp_path / "out.csv").exists() and not (tmp_path / "exported").exists()
        with pytest.raises(OutputFolderError, match=re.escape(says)):
            serve(str(model))


def test_predict_refuses_an_output_it_cannot_write_and_counts_below_1(tmp_path, hftransfer):
    """The predictions overwrote the input they were read from, and a folder named .csv was a traceback; a top_k or
    batch size below 1 was quietly read as 1 or as everything."""
    texts = tmp_path / "texts.csv"
    texts.write_text("text\nfine\n")
    (tmp_path / "folder.csv").mkdir()
    model = str(save_tiny_checkpoint(tmp_path / "ckpt", "vit"))
    for flags, says in [(["--output", str(texts)], "it is an input, which the predictions would overwrite"),
                        (["--output", str(tmp_path / "folder.csv")], "a folder; name a file in it"),
                        (["--output", str(tmp_path / "out.csv"), "--top_k", "0"], "--top_k: expected a whole number"),
                        (["--output", str(tmp_path / "out.csv"), "--batch_size", "-3"], "--batch_size: expected"),
                        (["--output", str(tmp_path / "out.csv"), "--threshold", "1.5"], "--threshold: expected a"),
                        (["--output", str(tmp_path / "out.csv"), "--threshold", "nan"], "--threshold: expected a")]:
        done = hftransfer("predict", model, str(texts), *flags)
        assert done.returncode != 0 and says in done.stderr, (flags, done.stderr)
    assert texts.read_text() == "text\nfine\n" and not (tmp_path / "out.csv").exists()
    # a file of an input folder: it was overwritten with the predictions (the user's data lost, exit 0)
    done = hftransfer("predict", model, str(tmp_path), "--output", str(texts))
    assert done.returncode == 1 and f"inside the input folder {tmp_path}, whose files are inputs" in done.stderr
    assert texts.read_text() == "text\nfine\n"
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    done = hftransfer("predict", model, str(notes), "--output", str(tmp_path / "out.csv"))  # rc 0 and an empty file
    assert done.returncode == 1 and "none of the 1 input(s) could be read by this image model" in done.stderr
    assert not (tmp_path / "out.csv").exists() and (tmp_path / "out.csv.skipped.csv").is_file()


def test_the_demo_hint_names_a_program_that_runs_from_where_it_is_printed(tmp_path, monkeypatch):
    """From a folder outside the project it printed ../../../work/main/.venv/bin/hftransfer."""
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    from hftransfer.recipe import demo_command

    local = Path(sys.executable).with_name("hftransfer")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv's hftransfer not on PATH
    monkeypatch.chdir(tmp_path)
    hint = demo_command("out dir")
    assert shlex.split(hint) == [str(local), "demo", "out dir"]
    done = subprocess.run([*shlex.split(hint)[:2], "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--port" in done.stdout
    monkeypatch.chdir(local.parent.parent)  # under the venv's folder: short and relative
    assert shlex.split(demo_command("out"))[0] == "bin/hftransfer"
    monkeypatch.setenv("PATH", f"{local.parent}:/usr/bin")
    assert demo_command("out") == "hftransfer demo out"


def test_help_after_a_command_that_takes_a_task_and_a_card_for_no_folder(capsys, tmp_path):
    """`hftransfer train --help` said "the task is one of image, text, not '--help'"; `card` of a folder that does not
    exist said it was no hftransfer output folder."""
    for command in ("train", "check", "compare"):
        cli.main([command, "--help"])
        assert capsys.readouterr().out.startswith(f"usage: hftransfer {command} TASK [recipe flags]")
    with pytest.raises(SystemExit, match=f"^error: {tmp_path / 'nowhere'}: no such folder$"):
        cli.main(["card", str(tmp_path / "nowhere")])


def test_freeze_report_shows_each_stage_of_the_default_and_of_lora(tmp_path, hftransfer):
    """`--strategy staged` (the run's default) and `lora` were refused: "invalid choice"."""
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "vit")
    staged = hftransfer("freeze-report", str(checkpoint), "--strategy", "staged", "--unfreeze_last_n", "1", "--json")
    assert staged.returncode == 0, staged.stderr
    head, base = staged.stdout.split("Stage 'staged':")
    assert "Stage 'head':" in head and "strategy=feature_extraction" in head and "strategy=fine_tune" in base
    trainable = json.loads(base[base.index("{"):])["plan"]["trainable"]  # the last stage: the head and block 3
    assert any(".3." in n for n in trainable) and not any(".2." in n for n in trainable)
    lora_report = hftransfer("freeze-report", str(checkpoint), "--strategy", "lora")
    assert lora_report.returncode == 0, lora_report.stderr
    assert "Stage 'lora':" in lora_report.stdout
    assert re.search(r"LoRA adapters on \d+ modules \(vit\.", lora_report.stdout)



def test_freeze_report_plans_a_decoder_classifier_without_a_head_stage_as_a_run_does(tmp_path, hftransfer):
    from support.families import save_decoder_checkpoint

    checkpoint = save_decoder_checkpoint(tmp_path / "ckpt", "qwen2")
    done = hftransfer("freeze-report", str(checkpoint), "--strategy", "staged")
    assert done.returncode == 0, done.stderr
    assert "Stage 'head'" not in done.stdout and "strategy=full" in done.stdout
