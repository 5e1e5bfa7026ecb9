import re

import pytest

from hftransfer.args import parse_args


def test_yaml_config_then_flags_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("strategy: fine_tune\nunfreeze_last_n: 3\nlearning_rate: 0.0005\nfreeze: ['a.*', 'b']\n")
    run = parse_args([str(config), "--learning_rate", "1e-4", "--output_dir", str(tmp_path / "out")])
    assert run.transfer.strategy == "fine_tune" and run.transfer.unfreeze_last_n == 3
    assert run.transfer.freeze == ["a.*", "b"]
    assert run.training.learning_rate == pytest.approx(1e-4)
    assert {"strategy", "learning_rate", "output_dir", "freeze"} <= run.explicit
    assert not run.given("num_train_epochs")
    same = parse_args(["--config", str(config), "--output_dir", str(tmp_path / "out")])
    assert same.training.learning_rate == pytest.approx(5e-4)


def test_every_training_arguments_flag_passes_through(tmp_path):
    run = parse_args(["--output_dir", str(tmp_path), "--gradient_accumulation_steps", "4", "--lr_scheduler_type",
                      "cosine", "--seed", "7", "--max_grad_norm", "0.5"])
    assert run.training.gradient_accumulation_steps == 4 and run.training.seed == 7
    assert run.training.lr_scheduler_type == "cosine" and run.training.max_grad_norm == 0.5
    assert run.training.report_to in ([], "none", ["none"])  # nothing reported anywhere unless asked


def test_unknown_flags_and_settings_are_errors(tmp_path):
    with pytest.raises(SystemExit, match="--learning_rat"):
        parse_args(["--learning_rat", "1"])
    config = tmp_path / "bad.yaml"
    config.write_text("stratgy: full\n")
    with pytest.raises(SystemExit, match="stratgy"):
        parse_args([str(config)])


def test_record_never_holds_the_token(tmp_path):
    run = parse_args(["--output_dir", str(tmp_path), "--hub_token", "hf_secret123"])
    assert run.training.hub_token == "hf_secret123"
    assert "hf_secret123" not in repr(run.to_dict())


def test_a_training_arguments_check_is_a_flag_error_not_a_traceback():
    import torch

    if torch.cuda.is_available():
        pytest.skip("bf16 runs on this GPU: nothing to refuse")
    with pytest.raises(SystemExit, match="error: Your setup doesn't support bf16.*use_cpu"):
        parse_args(["--bf16", "true"])
    assert parse_args(["--bf16", "true", "--use_cpu", "true"]).training.bf16  # the way the message names


@pytest.mark.parametrize("flags, message", [
    (["--learning_rate", "-1"], "--learning_rate -1.0: must be 0 or more"),
    (["--head_learning_rate", "-0.1"], "--head_learning_rate -0.1: must be 0 or more"),
    (["--num_train_epochs", "0"], "--num_train_epochs 0.0: must be more than 0"),
    (["--head_epochs", "-2"], "--head_epochs -2.0: must be more than 0"),
    (["--max_train_samples", "0"], "--max_train_samples 0: must be at least 1"),
    (["--max_eval_samples", "-5"], "--max_eval_samples -5: must be at least 1"),
    (["--max_seq_length", "0"], "--max_seq_length 0: must be at least 1"),
    (["--image_size", "0"], "--image_size 0: must be at least 1"),
    (["--lora_r", "0"], "--lora_r 0: must be at least 1"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0: must be at least 1"),
    (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size 0: must be at least 1"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps 0: must be at least 1"),
    (["--learning_rate", "nan"], "--learning_rate nan: must be 0 or more"),
    (["--learning_rate", "inf"], "--learning_rate inf: must be 0 or more"),
    (["--adversarial_epsilon", "nan"], "--adversarial_epsilon nan: must be 0 or more"),
    (["--head_epochs", "nan"], "--head_epochs nan: must be more than 0"),
    (["--num_train_epochs", "inf"], "--num_train_epochs inf: must be more than 0"),
    (["--unfreeze_last_n", "-1"], "--unfreeze_last_n -1: must be 0 or more"),
    (["--layer_lr_decay", "0"], "--layer_lr_decay 0.0: must be more than 0"),
    (["--lora_alpha", "0"], "--lora_alpha 0.0: must be more than 0"),
    (["--head_dropout", "1.5"], "--head_dropout 1.5: must be from 0 to less than 1"),
    (["--lora_dropout", "1"], "--lora_dropout 1.0: must be from 0 to less than 1"),
    (["--head_hidden_sizes", "8", "0"], "--head_hidden_sizes 8 0: must be at least 1 each"),
    (["--lr_multipliers", "vit.*=nan"], r"--lr_multipliers 'vit.\*=nan': expected PATTERN=FACTOR with a factor .*"),
    (["--seed", "-1"], r"--seed -1: must be from 0 to 2\*\*32 - 1"),
    (["--lr_multipliers", "vit.*=-1"], r"--lr_multipliers 'vit.\*=-1': expected PATTERN=FACTOR with a factor .*"),
])
def test_a_setting_out_of_its_range_is_a_flag_error(flags, message):
    """A negative rate failed inside torch's optimizer once the data and model had loaded; 0 epochs saved an
    untrained model; --max_train_samples 0 (and --max_seq_length 0) were read as no limit, --lora_r 0 and a batch
    size of 0 failed inside peft and torch; a NaN rate, factor or epsilon saved a model of NaN weights and exit 0;
    --unfreeze_last_n -1 trained every block but the first; --lora_alpha 0 scaled the adapters to nothing."""
    with pytest.raises(SystemExit, match=f"^error: {message}$"):
        parse_args(["--output_dir", "out", *flags])


def test_max_steps_sets_the_length_whatever_the_epochs_and_a_rate_of_0_holds_a_stage_still():
    run = parse_args(["--output_dir", "out", "--num_train_epochs", "0", "--max_steps", "5",
                      "--head_learning_rate", "0"])
    assert run.training.max_steps == 5 and run.transfer.head_learning_rate == 0


@pytest.mark.parametrize("text, message", [
    ("train_file: [a.csv\n", "cannot be read as YAML"),
    ("head_epochs: null\n", "head_epochs is null; give it a value, or leave it out for the default"),
    # values the flag's type or choices refuse: as defaults they were taken as they were (a traceback in training,
    # or, for max_train_samples: true, a run on one example)
    ("seed: 1.5\n", "argument --seed: invalid int value: '1.5'"),
    ("max_train_samples: true\n", "argument --max_train_samples.*: invalid int value: 'true'"),
    ("strategy: Staged\n", "argument --strategy: invalid choice: 'Staged'"),
    ("class_weights: 5\n", "argument --class_weights.*: invalid choice: '5'"),
    ("learning_rate: [0.1]\n", "learning_rate takes one value, not a list"),
    ("lr_multipliers: {a: 1}\n", "lr_multipliers takes values, not a mapping"),
    ("freeze: [a, {b: 1}]\n", r"freeze takes a list of values, not \['a', \{'b': 1\}\]"),
    ("[1, 2]\n", "expected a mapping of setting -> value"),
])
def test_a_config_file_that_cannot_be_read_or_leaves_a_setting_null_is_an_error_naming_it(tmp_path, text, message):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    with pytest.raises(SystemExit, match=f"^error: {re.escape(str(config))}: {message}"):
        parse_args([str(config)])
    broken = tmp_path / "run.json"
    broken.write_bytes(b'{"strategy": "full"')
    with pytest.raises(SystemExit, match=f"^error: {re.escape(str(broken))}: cannot be read as JSON"):
        parse_args([str(broken)])


def test_one_value_in_a_config_file_for_a_setting_of_several_is_a_list_of_one(tmp_path):
    """`freeze: "bert.embeddings.*"` was read as one pattern a character ('b', 'e', ...)."""
    config = tmp_path / "run.yaml"
    config.write_text('freeze: "bert.embeddings.*"\nhead_hidden_sizes: 16\n')
    run = parse_args([str(config), "--output_dir", str(tmp_path / "out")])
    assert run.transfer.freeze == ["bert.embeddings.*"] and run.transfer.head_hidden_sizes == [16]



def test_an_output_dir_that_is_the_checkpoint_or_inside_an_image_folder_it_reads_is_a_flag_error(tmp_path):
    """The pretrained weights were overwritten by the trained model (a checkpoint in the folder was removed as
    another command's); an export's graph stayed beside the new weights and was what predict ran; the report and
    examples written into the training folder became two more classes of the next run (which then scored 0)."""
    checkpoint, images = tmp_path / "ckpt", tmp_path / "images"
    checkpoint.mkdir()
    (images / "cat").mkdir(parents=True)
    for model in (checkpoint, checkpoint / "stage-staged" / "checkpoint-2"):  # a checkpoint of an earlier run in it
        model.mkdir(parents=True, exist_ok=True)
        with pytest.raises(SystemExit, match="it holds the checkpoint the run starts from"):
            parse_args(["--model_name_or_path", str(model), "--output_dir", str(checkpoint)])
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "model.onnx").write_bytes(b"graph")  # the old graph stayed beside the new weights
    with pytest.raises(SystemExit, match="it holds an exported model"):
        parse_args(["--output_dir", str(exported)])
    for flag in ("--train_dir", "--validation_dir"):
        with pytest.raises(SystemExit, match=f"inside {flag} {re.escape(str(images))}, where what the run writes"):
            parse_args([flag, str(images), "--output_dir", str(images / "out")])
    assert parse_args(["--model_name_or_path", str(checkpoint), "--train_dir", str(images), "--output_dir",
                       str(tmp_path / "out")]).training.output_dir == str(tmp_path / "out")
    assert parse_args(["--model_name_or_path", str(checkpoint), "--output_dir", str(tmp_path)])  # a folder beside


def test_an_output_dir_holding_files_no_run_wrote_that_a_run_would_replace_is_a_flag_error(tmp_path):
    """A model downloaded into the folder had its config and weights replaced, a project's README.md became the
    card, with exit 0. An earlier run's folder (record, file list or stage folders) and other files are fine."""
    downloaded, project = tmp_path / "bert-base", tmp_path / "project"
    for folder, names in [(downloaded, ("config.json", "model.safetensors", "vocab.txt")),
                          (project, ("README.md", "notes.txt"))]:
        folder.mkdir()
        for name in names:
            (folder / name).write_text("theirs")
    with pytest.raises(SystemExit, match=r"bert-base: it holds config.json, model.safetensors, vocab.txt, which no "
                       "hftransfer run wrote and this one would overwrite"):
        parse_args(["--output_dir", str(downloaded)])
    with pytest.raises(SystemExit, match=r"project: it holds README.md, which no hftransfer run wrote"):
        parse_args(["--output_dir", str(project)])
    for mark in ("hftransfer_run.json", ".hftransfer_files.json", "stage-staged/checkpoint-2/x"):
        earlier = tmp_path / f"earlier-{len(mark)}"
        (earlier / mark).parent.mkdir(parents=True, exist_ok=True)
        (earlier / mark).write_text("{}")
        (earlier / "config.json").write_text("{}")
        assert parse_args(["--output_dir", str(earlier)]).training.output_dir == str(earlier)
    (project / "README.md").unlink()
    (project / "data_quality.json").write_text("{}")  # `hftransfer check`'s, rewritten by the run as its own
    assert parse_args(["--output_dir", str(project)]).training.output_dir == str(project)


def test_an_output_dir_that_is_a_file_or_under_one_and_a_negative_patience_are_flag_errors(tmp_path):
    """A data file named as --output_dir failed with FileExistsError once training had started; a negative patience
    stopped every stage after its second epoch ("stale >= -1")."""
    (tmp_path / "reviews.csv").write_text("text,label\n")
    for output in (tmp_path / "reviews.csv", tmp_path / "reviews.csv" / "run"):
        with pytest.raises(SystemExit, match=f"{re.escape(str(tmp_path / 'reviews.csv'))} is a file, not a folder"):
            parse_args(["--output_dir", str(output)])
    with pytest.raises(SystemExit, match="--early_stopping_patience -1: must be 0 or more"):
        parse_args(["--output_dir", str(tmp_path / "out"), "--early_stopping_patience", "-1"])
    with pytest.raises(SystemExit, match=r"--max_steps 0: must be at least 1, or -1"):  # a step a stage at rate 0
        parse_args(["--output_dir", str(tmp_path / "out"), "--max_steps", "0"])


def test_config_values_no_flag_can_say_are_kept_as_given(tmp_path):
    """A mapping or a list where the setting's type takes one, an empty list, a value starting with '-': read before
    as defaults, and still (the flags' path refused them at first)."""
    config = tmp_path / "run.yaml"
    config.write_text('lr_scheduler_kwargs: {power: 2}\nreport_to: [tensorboard]\nfreeze: []\nrun_name: "-x"\n'
                      'unfreeze: ["-odd", "b"]\nremove_unused_columns: false\n')
    run = parse_args([str(config), "--output_dir", str(tmp_path / "out")])
    assert run.training.lr_scheduler_kwargs == {"power": 2} and run.training.report_to == ["tensorboard"]
    assert run.transfer.freeze == [] and run.training.run_name == "-x" and run.transfer.unfreeze == ["-odd", "b"]
    assert run.training.remove_unused_columns is False
