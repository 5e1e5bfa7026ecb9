"""The bad-input matrix: each case gives a clear error before training, or a counted skip reported at the end."""

import io
import json
import logging

import numpy as np
import pytest
from conftest import make_image_folder, save_tiny_checkpoint, save_tiny_text_checkpoint, write_reviews_csv
from PIL import Image
from support.hub_server import local_hub, upload  # noqa: F401 - a fixture

from hftransfer.args import DataArguments
from hftransfer.data import DataError, prepare_splits
from hftransfer.tasks import ImageTask, TextTask


def image_splits(train, validation):
    args = DataArguments(train_dir=str(train), validation_dir=str(validation))
    task = ImageTask(args)
    splits, report, _ = prepare_splits(args, task, seed=0)
    return splits, report, task


def write(path, make):
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    return path


def _exif_rotated(path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20), "red").save(path, exif=exif.tobytes())


def _truncated(path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[:600])


SKIPPED = {  # file -> the reason counted in the data report
    "corrupt.png": (lambda p: p.write_bytes(np.random.default_rng(1).bytes(500)), "not an image"),
    "truncated.png": (_truncated, "corrupt image"),
    "empty.png": (lambda p: p.write_bytes(b""), "not an image"),
    "notes.txt": (lambda p: p.write_text("not an image"), "not an image"),
    "bomb.png": (lambda p: Image.new("1", (15000, 15000)).save(p), "decompression bomb"),
}
KEPT = {  # file -> (PIL mode it was saved in) ; all become 3-channel inputs
    "rgba.png": lambda p: Image.new("RGBA", (30, 30), (255, 0, 0, 128)).save(p),
    "cmyk.jpg": lambda p: Image.new("CMYK", (30, 30), (0, 255, 0, 0)).save(p),
    "palette.png": lambda p: Image.new("RGB", (30, 30), "blue").convert("P").save(p),
    "sixteen.png": lambda p: Image.fromarray(np.full((30, 30), 40000, dtype=np.uint16)).save(p),
    "gray.png": lambda p: Image.new("L", (30, 30), 128).save(p),
    "tiny.png": lambda p: Image.new("RGB", (1, 1), "white").save(p),
    "rotated.jpg": _exif_rotated,
}


def test_image_matrix_skips_what_cannot_be_read_and_converts_the_rest(tmp_path):
    train = make_image_folder(tmp_path / "train", 4)
    validation = make_image_folder(tmp_path / "validation", 2)
    for name, (make, _) in SKIPPED.items():
        write(train / "square" / name, make)
    for name, make in KEPT.items():
        write(train / "hstripes" / name, make)
    splits, report, task = image_splits(train, validation)
    assert len(splits["train"]) == 12 + len(KEPT)
    reasons = report.skipped["train"]
    assert sum(reasons.values()) == len(SKIPPED) == report.total_skipped
    for name, (_, reason) in SKIPPED.items():
        assert any(reason in r for r in reasons), (name, reasons)
    assert all(name in report.summary() for name in ["truncated.png", "notes.txt"])

    processor = task.load_processor(str(save_tiny_checkpoint(tmp_path / "ckpt", "vit")))
    batch = splits["train"].with_transform(task.transform(processor, train=False))[:]
    assert batch["pixel_values"].shape == (len(splits["train"]), 3, 32, 32)  # every kept mode became RGB
    paths = [str(p) for p in (train / "hstripes").iterdir()]
    rotated = next(p for p in paths if p.endswith("rotated.jpg"))
    from hftransfer.tasks import _open_image

    assert _open_image(rotated).size == (20, 40)  # EXIF orientation applied: 40x20 stored, shown upright


def text_splits(tmp_path, content, **kwargs):
    path = tmp_path / "data.csv"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    args = DataArguments(train_file=str(path), **kwargs)
    return prepare_splits(args, TextTask(args), seed=0, given=frozenset(kwargs))[:2]  # named columns are never guessed


ROWS = "text,label\n" + "".join(f"a good film {i},pos\na bad film {i},neg\n" for i in range(10))


def test_text_empty_and_whitespace_are_counted_skips(tmp_path):
    splits, report = text_splits(tmp_path, ROWS + '"",pos\n"   ",neg\n')
    assert report.total_skipped == 2 and len(splits["train"]) + len(splits["validation"]) == 20


def test_very_long_text_is_kept_and_truncated(tmp_path):
    splits, report = text_splits(tmp_path, ROWS + f"{'word ' * 20000},pos\n")
    assert report.total_skipped == 0
    checkpoint = save_tiny_text_checkpoint(tmp_path / "ckpt", "bert")
    task = TextTask(DataArguments())
    tokenizer = task.load_processor(str(checkpoint))
    longest = max(task.lengths(splits["train"], tokenizer))
    assert longest == tokenizer.model_max_length


@pytest.mark.parametrize("columns", ["text", "premise,hypothesis"])
def test_text_lengths_are_counted_a_block_at_a_time_as_whole(columns, tmp_path, monkeypatch):
    """The length count that groups batches tokenized every text at once (200,000 held 1.5 GB of encodings): now a
    block at a time, each text's count the one it has alone, across block edges, for one text or a pair."""
    from datasets import Dataset

    from hftransfer import tasks

    rng = np.random.default_rng(0)
    words = ["film", "a", "wonderful", "dull", "unexpectedly", "moving", "plot"]
    rows = {name: [" ".join(rng.choice(words, rng.integers(1, 40))) for _ in range(11)] for name in columns.split(",")}
    task = TextTask(DataArguments(text_column_names=columns))
    tokenizer = task.load_processor(str(save_tiny_text_checkpoint(tmp_path / "ckpt", "bert")))
    tokenizer.model_max_length = 32  # some texts are cut
    alone = [len(tokenizer(*(rows[c][i] for c in rows), truncation=True, max_length=32)["input_ids"])
             for i in range(11)]
    monkeypatch.setattr(tasks, "LENGTH_BLOCK", 4)
    assert task.lengths(Dataset.from_dict(rows), tokenizer) == alone
    assert len(set(alone)) > 3 and max(alone) == 32


@pytest.mark.parametrize("content, message", [
    (ROWS.encode() + b"caf\xe9 \xff broken,pos\n", "line 22 is not UTF-8"),
    (ROWS + "no label here,\n", r"1 of 21 rows have an empty label .*, e.g. row\(s\) 20"),
    ("text,label\n" + "".join(f"film {i},pos\n" for i in range(10)), "single class"),
    ("words,label\n" + "".join(f"film {i},{i % 2}\n" for i in range(10)) + "x,1\n", "'text'"),
], ids=["invalid UTF-8", "missing labels", "single class", "missing column"])
def test_text_errors_name_file_and_problem(tmp_path, content, message):
    with pytest.raises(DataError, match=message) as err:
        text_splits(tmp_path, content, text_column_names="text")
    assert "data.csv" in str(err.value)


def test_unseen_validation_label_is_an_error(tmp_path):
    (tmp_path / "val.csv").write_text("text,label\nsomething,neutral\nfine,pos\n")
    with pytest.raises(DataError, match="neutral"):
        text_splits(tmp_path, ROWS, validation_file=str(tmp_path / "val.csv"))


def test_a_class_with_one_example_stays_in_training_and_is_reported(tmp_path):
    splits, report = text_splits(tmp_path, ROWS + "an odd one,weird\n")
    names = splits["train"].features["label"].names
    assert names.index("weird") in splits["train"]["label"]
    assert names.index("weird") not in splits["validation"]["label"]
    assert "weird" in report.summary() and "single example" in report.summary()


def recipe(capsys, script, *args):
    """A recipe's `main` in this process (a subprocess would spend 6 s importing): its exit message and output."""
    from hftransfer.recipe import main

    with pytest.raises(SystemExit) as exit_:
        main(script.removesuffix(".py"), [*args, "--disable_tqdm", "true"])
    return str(exit_.value.code), capsys.readouterr().out


def test_missing_label_column_fails_before_training(tmp_path, capsys):
    from datasets import Dataset

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    table = tmp_path / "d.parquet"
    Dataset.from_dict({"image": [str(tmp_path / "a.png")] * 4, "kind": ["a", "b"] * 2}).to_parquet(table)
    message, _ = recipe(capsys, "image.py", "--train_file", str(table), "--output_dir", str(tmp_path / "out"))
    assert "no column 'label'" in message and "kind" in message
    assert not (tmp_path / "out").exists()


def test_config_errors_come_before_training(tmp_path, image_folders, capsys):
    """Each an exit with one message before any training step (--metric_for_best_model by a metric computed only at
    the end failed after the first epoch, a KeyError)."""
    text_checkpoint = save_tiny_text_checkpoint(tmp_path / "text-ckpt", "bert")
    image_checkpoint = save_tiny_checkpoint(tmp_path / "image-ckpt", "vit")
    reviews = write_reviews_csv(tmp_path / "reviews.csv")
    common = ["--output_dir", str(tmp_path / "out")]
    cases = [
        (("image.py", "--model_name_or_path", str(text_checkpoint), "--train_dir", str(image_folders[0]), *common),
         "is not an image classifier: it is a text model; use recipes/text.py"),
        (("text.py", "--model_name_or_path", str(image_checkpoint), "--train_file", str(reviews), *common),
         "is not a text classifier: it is an image model; use recipes/image.py"),
        (("image.py", "--learning_rat", "1e-3", *common), "error: unknown argument(s): --learning_rat"),
        (("image.py", "--model_name_or_path", str(image_checkpoint), "--train_dir", str(image_folders[0]),
          "--strategy", "fine_tune", "--unfreeze", "vit.encoder.layers.*", *common), "matches no parameter"),
        (("text.py", "--model_name_or_path", str(text_checkpoint), "--train_file", str(reviews), "--metric_names", "",
          *common), "error: --metric_names: an empty name"),  # an IndexError inside evaluate
        (("text.py", "--model_name_or_path", str(text_checkpoint), "--train_file", str(reviews), "--metric_names", "f1",
          "--metric_for_best_model", "f1", *common), "--metric_for_best_model f1: not a metric of every epoch's"),
        (("text.py", "--model_name_or_path", str(text_checkpoint), "--train_file", str(reviews), "--max_seq_length",
          "2", *common), "--max_seq_length 2: BertTokenizer"),
    ]
    for case, expected in cases:
        message, out = recipe(capsys, *case)
        assert expected in message, message  # an exit with a message, no traceback,
        assert "{'loss'" not in out  # and before any training step


@pytest.mark.usefixtures("local_hub")
def test_a_checkpoint_the_hub_or_the_disk_does_not_have_is_an_error_that_names_it(tmp_path, capsys):
    """transformers' own message, without the traceback it came with before; a system error (here a cache folder
    that is a file) is not the checkpoint's fault and keeps its own type."""
    reviews = write_reviews_csv(tmp_path / "reviews.csv")
    for name, expected in [("alice/no-such-model", "is not a local folder and is not a valid model identifier"),
                           (str(tmp_path / "no-such-folder"), "not a folder")]:
        message, out = recipe(capsys, "text.py", "--model_name_or_path", name, "--train_file", str(reviews),
                              "--output_dir", str(tmp_path / "out"))
        assert message.startswith(f"error: --model_name_or_path {name}: ") and expected in message, message
        assert "Traceback" not in out and "{'loss'" not in out
    repo = upload(save_tiny_text_checkpoint(tmp_path / "ckpt", "bert"), "tiny-bert")
    (tmp_path / "cache-file").write_text("")
    with pytest.raises(OSError) as raised:
        recipe(capsys, "text.py", "--model_name_or_path", repo, "--train_file", str(reviews), "--cache_dir",
               str(tmp_path / "cache-file"), "--output_dir", str(tmp_path / "out"))
    assert raised.value.errno is not None


def test_a_model_that_cannot_run_on_the_runs_inputs_is_an_error_before_training(tmp_path, image_folders, capsys):
    """SigLIP 2's NaFlex classifier needs the patch grid its processor makes beside the pixels, which a run does not
    pass: a clear error naming the inputs, before any stage (it crashed inside the first one)."""
    import transformers as tf

    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37,
              "patch_size": 16, "num_patches": 16}
    model = tf.Siglip2ForImageClassification(tf.Siglip2Config(vision_config=vision, text_config={
        "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}))
    model.save_pretrained(tmp_path / "ckpt")
    tf.Siglip2ImageProcessor(patch_size=16, max_num_patches=16).save_pretrained(tmp_path / "ckpt")
    message, out = recipe(capsys, "image.py", "--model_name_or_path", str(tmp_path / "ckpt"), "--train_dir",
                          str(image_folders[0]), "--output_dir", str(tmp_path / "out"))
    assert "Siglip2ForImageClassification cannot run on the inputs this run makes (pixel_values" in message, message
    assert "Stage '" not in out and "{'loss'" not in out


def test_a_checkpoint_without_its_tokenizer_files_is_an_error_before_training(tmp_path, capsys):
    """transformers loads such a folder's tokenizer anyway, with the special tokens alone: every word would be [UNK]."""
    checkpoint = save_tiny_text_checkpoint(tmp_path / "ckpt", "bert")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (checkpoint / name).unlink()
    reviews = write_reviews_csv(tmp_path / "reviews.csv")
    message, out = recipe(capsys, "text.py", "--model_name_or_path", str(checkpoint), "--train_file", str(reviews),
                          "--output_dir", str(tmp_path / "out"))
    assert f"The tokenizer of {checkpoint} has no tokens but its 5 special ones" in message
    assert "Stage '" not in out and "{'loss'" not in out


def test_a_decoder_without_its_tokenizer_files_is_an_error_before_training(tmp_path, capsys):
    """A Llama folder with only its tokenizer_config.json: the SentencePiece tokenizer loads empty and turns every text
    into no tokens (no unknown token to count), which crashed inside the model's first forward pass."""
    import transformers as tf

    checkpoint = tmp_path / "ckpt"
    tf.LlamaForSequenceClassification(tf.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, bos_token_id=1, eos_token_id=2)).save_pretrained(checkpoint)
    (checkpoint / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    message, out = recipe(capsys, "text.py", "--model_name_or_path", str(checkpoint), "--train_file",
                          str(write_reviews_csv(tmp_path / "reviews.csv")), "--output_dir", str(tmp_path / "out"))
    assert f"The tokenizer of {checkpoint} has no tokens but its 3 special ones" in message
    assert "Stage '" not in out and "{'loss'" not in out


def test_a_tokenizer_that_misses_some_words_is_a_warning_that_names_the_share(tmp_path, caplog):
    from transformers import AutoTokenizer

    from hftransfer.tasks import _check_known_words

    tokenizer = AutoTokenizer.from_pretrained(save_tiny_text_checkpoint(tmp_path / "ckpt", "bert"))
    english = ["a wonderful, moving film"] * 9
    _check_known_words(tokenizer, english)
    assert "[UNK]" not in caplog.text
    _check_known_words(tokenizer, english + ["\U0001F600 \U0001F44D \U0001F3AC \U0001F37F"])  # words MiniLM lacks
    assert "reads 8% of the training texts' tokens as [UNK]" in caplog.text  # 4 of 49
    caplog.clear()  # one emoji-only review among many: under the share, and said alone
    _check_known_words(tokenizer, english * 5 + ["\U0001F600\U0001F44D", "great \U0001F600"])
    assert "tokens as [UNK]" not in caplog.text
    assert "1 training text(s) are nothing but [UNK]" in caplog.text and "'\U0001F600\U0001F44D'" in caplog.text


def test_an_image_checkpoint_without_its_processor_is_an_error_that_says_what_to_save(tmp_path, image_folders, capsys):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "mobilenet_v2")
    (checkpoint / "preprocessor_config.json").unlink()
    message, out = recipe(capsys, "image.py", "--model_name_or_path", str(checkpoint), "--train_dir",
                          str(image_folders[0]), "--output_dir", str(tmp_path / "out"))
    assert f"{checkpoint}: no image processor (preprocessor_config.json) beside the model" in message, message
    assert "Stage '" not in out and "{'loss'" not in out


def test_a_split_with_no_usable_row_is_an_error_that_says_why(tmp_path):
    """Every text empty: the labels were read from no rows (an IndexError) before; now the reasons are named."""
    with pytest.raises(DataError, match=r"(?s)data\.csv \(train\): no usable examples, 3 skipped:\n.*3 x empty text"):
        text_splits(tmp_path, 'text,label\n"",pos\n"",neg\n,pos\n')


def test_a_checkpoint_to_resume_from_that_is_not_one_is_an_error_before_training(tmp_path, capsys):
    """--resume_from_checkpoint was ignored in silence (the run started over) when it named a missing folder, a
    folder outside this output folder's stages, an incomplete checkpoint, or checkpoints were off."""
    checkpoint = save_tiny_text_checkpoint(tmp_path / "ckpt", "bert")
    reviews = write_reviews_csv(tmp_path / "reviews.csv")
    out = tmp_path / "out"
    half_written = out / "stage-head" / "checkpoint-4"
    half_written.mkdir(parents=True)
    (tmp_path / "elsewhere" / "checkpoint-4").mkdir(parents=True)
    save = ["--save_strategy", "epoch"]
    for given, flags, expected in [(tmp_path / "missing", save, "not a folder"),
                                   (tmp_path / "elsewhere" / "checkpoint-4", save, "not a stage's checkpoint in"),
                                   (half_written, save, "not a complete checkpoint"),
                                   (half_written, [], "checkpoints are off")]:
        message, out_text = recipe(capsys, "text.py", "--model_name_or_path", str(checkpoint), "--train_file",
                                   str(reviews), "--output_dir", str(out), "--strategy", "feature_extraction",
                                   "--resume_from_checkpoint", str(given), *flags)
        assert message.startswith(f"error: --resume_from_checkpoint {given}: ") and expected in message, message
        assert "{'loss'" not in out_text


def test_a_named_metric_that_cannot_score_these_predictions_is_a_warning_not_a_lost_run(tmp_path, image_folders,
                                                                                         caplog):
    """`--metric_names f1` on three classes (evaluate's f1 defaults to average="binary") failed the final evaluation
    after every stage had trained, and the output folder stayed empty."""
    from hftransfer.recipe import main

    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        metrics = main("image", ["--model_name_or_path", str(save_tiny_checkpoint(tmp_path / "ckpt", "vit")),
                                 "--train_dir", str(image_folders[0]), "--validation_dir", str(image_folders[1]),
                                 "--output_dir", str(out), "--head_epochs", "1", "--num_train_epochs", "1",
                                 "--metric_names", "f1", "--disable_tqdm", "true", "--check_data", "false"])
    assert "--metric_names f1 cannot be computed on these predictions (Target is multiclass" in caplog.text
    assert (out / "model.safetensors").is_file() and 0 <= metrics["eval_accuracy"] <= 1

