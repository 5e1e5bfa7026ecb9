import json

import pytest
import torch
from conftest import NEGATIVE, POSITIVE, save_tiny_text_checkpoint, tiny_text_model, write_reviews_csv
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hftransfer import freezing
from hftransfer.args import DataArguments, parse_args
from hftransfer.data import DataError, prepare_splits
from hftransfer.freezing import FreezePlan
from hftransfer.tasks import TextTask
from hftransfer.training import TransferRun


def prepare(**kwargs):
    args = DataArguments(**kwargs)
    return prepare_splits(args, TextTask(args), seed=0)[:2]


def run(args):
    parsed = parse_args([*args, "--disable_tqdm", "true"])
    transfer = TransferRun(parsed, TextTask(parsed.data))
    return transfer, transfer.execute()


def test_freezing_bert_by_patterns():
    model = tiny_text_model("bert")
    plan = freezing.apply(model, FreezePlan("full", freeze=["bert.embeddings.*", "bert.encoder.layer.[0-3].*"]))
    assert not any(n.startswith(("bert.embeddings.", "bert.encoder.layer.0.", "bert.encoder.layer.3."))
                   for n in plan.trainable)
    assert any(n.startswith("bert.encoder.layer.4.") for n in plan.trainable)
    assert {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight"} <= set(plan.trainable)
    assert freezing.block_list_name(model) == "bert.encoder.layer"


def test_distilbert_head_includes_its_pre_classifier():
    model = tiny_text_model("distilbert")
    plan = freezing.apply(model, FreezePlan("feature_extraction"))
    assert set(plan.trainable) == {"pre_classifier.weight", "pre_classifier.bias", "classifier.weight",
                                   "classifier.bias"}
    plan = freezing.apply(model, FreezePlan("fine_tune", unfreeze_last_n=1))
    assert any(n.startswith("distilbert.transformer.layer.2.") for n in plan.trainable)
    assert not any(n.startswith("distilbert.transformer.layer.1.") for n in plan.trainable)


def test_string_labels_are_cast_and_named_in_the_saved_config(tmp_path):
    checkpoint = save_tiny_text_checkpoint(tmp_path / "ckpt", "distilbert")
    data = write_reviews_csv(tmp_path / "train.csv")
    _, metrics = run(["--model_name_or_path", str(checkpoint), "--train_file", str(data), "--output_dir",
                      str(tmp_path / "out"), "--num_train_epochs", "1"])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "bad", "1": "good"}
    assert (tmp_path / "out" / "tokenizer.json").exists() or (tmp_path / "out" / "vocab.txt").exists()
    assert 0 <= metrics["eval_accuracy"] <= 1


def test_sentence_pairs_reach_the_model_as_pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"premise": p, "hypothesis": h, "label": int(p in POSITIVE)} for p in POSITIVE + NEGATIVE
            for h in ("it was good", "it was bad")]
    path.write_text("\n".join(json.dumps(r) for r in rows * 2))
    checkpoint = save_tiny_text_checkpoint(tmp_path / "ckpt", "bert")
    transfer, _ = run(["--model_name_or_path", str(checkpoint), "--train_file", str(path), "--text_column_names",
                       "premise,hypothesis", "--output_dir", str(tmp_path / "out"), "--num_train_epochs", "1"])
    item = transfer.train_raw[0]
    assert 1 in item["token_type_ids"]  # the second segment is marked
    tokens = AutoTokenizer.from_pretrained(tmp_path / "out").convert_ids_to_tokens(item["input_ids"])
    assert tokens.count("[SEP]") == 2  # predict, the demo, the export and the card: tests/test_predict.py


def test_multi_label_trains_with_the_right_problem_type_and_metrics(tmp_path):
    path = tmp_path / "tags.jsonl"
    rows = []
    for text in POSITIVE + NEGATIVE:
        rows.append({"text": text, "label": ["positive" if text in POSITIVE else "negative"]
                     + (["visual"] if "shot" in text else [])})
    path.write_text("\n".join(json.dumps(r) for r in rows * 3))
    checkpoint = save_tiny_text_checkpoint(tmp_path / "ckpt", "bert")
    _, metrics = run(["--model_name_or_path", str(checkpoint), "--train_file", str(path), "--output_dir",
                      str(tmp_path / "out"), "--num_train_epochs", "1"])
    assert {"eval_f1_micro", "eval_f1_macro", "eval_accuracy"} <= set(metrics)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert model.config.problem_type == "multi_label_classification"
    assert set(model.config.id2label.values()) == {"negative", "positive", "visual"}


def test_empty_and_whitespace_texts_are_counted_skips(tmp_path):
    """Zero-width spaces alone (which str.strip() keeps, and a tokenizer reads as nothing) trained as texts."""
    data = write_reviews_csv(tmp_path / "train.csv", extra_rows=['"",good', '"   ",bad', ',good', '"\u200b\u200b",bad',
                                                                  '"\ufeff \u200d",good'])
    splits, report = prepare(train_file=str(data))
    assert report.total_skipped == 5
    assert "empty text in 'text'" in report.summary()
    assert len(splits["train"]) + len(splits["validation"]) == 48


def test_missing_text_column_and_unseen_label_are_errors(tmp_path):
    data = write_reviews_csv(tmp_path / "train.csv")
    named = DataArguments(train_file=str(data), text_column_names="review")
    with pytest.raises(DataError, match="no column 'review'"):  # named by the user: never guessed
        prepare_splits(named, TextTask(named), seed=0, given=frozenset({"text_column_names"}))
    validation = tmp_path / "validation.csv"
    validation.write_text('text,label\n"fine",good\n"meh",neutral\n')
    with pytest.raises(DataError, match="'neutral'"):
        prepare(train_file=str(data), validation_file=str(validation))


def test_csv_with_a_broken_row_names_the_file_and_line(tmp_path):
    data = write_reviews_csv(tmp_path / "train.csv", extra_rows=['"a broken row",good,extra,fields'])
    with pytest.raises(DataError) as err:
        prepare(train_file=str(data))
    assert "train.csv" in str(err.value) and "line" in str(err.value).lower()


@pytest.mark.parametrize("name, content, says", [
    ("empty.jsonl", "", "the file is empty"),  # the reason was blank
    ("header.csv", "text,label\n", "no rows, only a header"),  # 'Instruction "train" corresponds to no data!'
    ("broken.jsonl", '{"text": "a", "label": 1}\n{"text": "b" "label": 2}\n',
     "line 2 is not a JSON object .Expecting ',' delimiter at column 14."),  # "Trailing data at position 25"
])
def test_a_file_of_no_rows_or_a_broken_json_line_says_so(tmp_path, name, content, says):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=f"{name}: cannot be read as (csv|json): {says}"):
        prepare(train_file=str(tmp_path / name))


@pytest.mark.long
def test_minilm_zoo_transfers_and_reloads(tmp_path):
    """The text recipe's default, in this process (`accelerate launch` of the text recipe: test_publish's push and
    test_distributed's DDP runs; of the image default: test_recipe)."""
    from hftransfer.recipe import main

    out = tmp_path / "out"
    main("text", ["--output_dir", str(out), "--max_train_samples", "256", "--max_eval_samples", "200",
                  "--num_train_epochs", "1", "--disable_tqdm", "true"])
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] > 0.65  # balanced binary: chance is 0.5
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "rotten", 1: "fresh"}
    inputs = tokenizer(["a masterpiece: moving, funny and brilliantly acted",
                        "a tedious, clumsy and utterly boring film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**inputs).logits.argmax(-1).tolist()
    assert predicted == [1, 0]


def test_text_folders_are_read_and_empty_files_counted(tmp_path):
    for label, texts in (("good", POSITIVE), ("bad", NEGATIVE)):
        (tmp_path / "train" / label).mkdir(parents=True)
        for i, text in enumerate(texts * 2):
            (tmp_path / "train" / label / f"{i}.txt").write_text(text)
    (tmp_path / "train" / "good" / "empty.txt").write_text("  \n")
    (tmp_path / "train" / "bad" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "train" / "bad" / "notes.md").write_text("labelling notes, not a review")
    splits, report = prepare(train_dir=str(tmp_path / "train"))
    assert len(splits["train"]) + len(splits["validation"]) == 24
    assert report.skipped["train"] == {"empty text": 1, "not UTF-8 text": 1, "not a .txt file": 1}


def test_batches_group_texts_of_similar_length(tmp_path):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from hftransfer.trainer import TransferTrainer

    data = write_reviews_csv(tmp_path / "train.csv", extra_rows=[f'"{"very long " * 60}",good'] * 16)
    checkpoint = save_tiny_text_checkpoint(tmp_path / "ckpt", "bert")
    parsed = parse_args(["--model_name_or_path", str(checkpoint), "--train_file", str(data), "--output_dir",
                         str(tmp_path / "out"), "--per_device_train_batch_size", "4"])
    transfer = TransferRun(parsed, TextTask(parsed.data))
    transfer.setup()
    assert transfer.args.train_sampling_strategy == "group_by_length"
    from dataclasses import replace

    def padded_tokens(strategy):
        trainer = TransferTrainer(model=transfer.model, train_dataset=transfer.train_raw, lengths=transfer.lengths,
                                  args=replace(transfer.args, train_sampling_strategy=strategy, eval_strategy="no"),
                                  data_collator=TextTask().collator(transfer.processor))
        sampler = trainer._get_train_sampler()
        assert isinstance(sampler, LengthGroupedSampler) == (strategy == "group_by_length")
        return sum(batch["input_ids"].numel() for batch in trainer.get_train_dataloader())

    assert padded_tokens("group_by_length") < 0.75 * padded_tokens("random")  # long texts travel together


def test_unnamed_columns_are_inferred_when_unambiguous_and_never_when_named(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("id,sentence,Sentiment\n" + "\n".join(
        f'{i},"{t}",{"pos" if t in POSITIVE else "neg"}' for i, t in enumerate((POSITIVE + NEGATIVE) * 3)))
    args = DataArguments(train_file=str(path))
    splits, _, args = prepare_splits(args, TextTask(args), seed=0)  # the columns read
    assert args.text_column_names == "sentence" and args.label_column_name == "Sentiment"
    assert splits["train"].features["label"].names == ["neg", "pos"]
    named = DataArguments(train_file=str(path), text_column_names="text")
    with pytest.raises(DataError, match="no column 'text'"):
        prepare_splits(named, TextTask(named), seed=0, given=frozenset({"text_column_names"}))


def test_dataset_name_takes_a_local_dataset_folder_and_its_test_split(tmp_path):
    from datasets import Dataset

    folder = tmp_path / "reviews"
    folder.mkdir()
    rows = {"text": POSITIVE + NEGATIVE, "label": ["good"] * len(POSITIVE) + ["bad"] * len(NEGATIVE)}
    Dataset.from_dict({k: v * 3 for k, v in rows.items()}).to_parquet(folder / "train.parquet")
    Dataset.from_dict(rows).to_parquet(folder / "test.parquet")
    splits, report = prepare(dataset_name=str(folder))
    assert len(splits["train"]) == 36 and len(splits["validation"]) == 12  # "test" serves as validation
    assert report.source == str(folder)


def test_a_model_without_a_position_table_keeps_the_tokenizers_limit():
    """XLNet's config answers -1 for its position table (it has none): the limit is the tokenizer's, capped."""
    from transformers import XLNetConfig, XLNetForSequenceClassification

    from hftransfer import zoo
    from hftransfer.choices import Choices

    model = XLNetForSequenceClassification(XLNetConfig(vocab_size=30522, d_model=32, n_layer=2, n_head=2, d_inner=37))
    assert model.config.max_position_embeddings == -1
    tokenizer = AutoTokenizer.from_pretrained(zoo.prepare("all-MiniLM-L6-v2"))
    choices = Choices()
    TextTask(DataArguments()).adapt_processor(tokenizer, model, {}, choices)
    assert tokenizer.model_max_length == choices.made["max_seq_length"]["value"] == 256


def test_a_model_whose_scores_move_with_padding_is_said_before_training(caplog):
    """ConvBERT's convolutions span the padding a batch adds to a text (as CANINE's downsampling and Nystromformer's
    landmarks do), so evaluation, predict and the demo score a text by the batch it is in: nothing said it. A BERT,
    which masks its padding, is not named; a text that fills the token limit alone is cut so that it is padded."""
    from datasets import Dataset
    from support.families import keep_activations
    from transformers import (BertConfig, BertForSequenceClassification, ConvBertConfig,
                              ConvBertForSequenceClassification)

    from hftransfer import zoo
    from hftransfer.modeling import check_padding

    sizes = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    tokenizer = AutoTokenizer.from_pretrained(zoo.prepare("all-MiniLM-L6-v2"), model_max_length=16)
    train = Dataset.from_dict({"text": ["a gripping, funny and moving film " * 8, "x " * 40], "label": [0, 1]})
    alone, padded = TextTask(DataArguments()).padding_probe(tokenizer, train)
    assert alone["input_ids"].shape[1] < padded["input_ids"].shape[1] <= 16 and not padded["attention_mask"][0].all()
    for model, named in ((ConvBertForSequenceClassification(ConvBertConfig(**sizes, embedding_size=32)), True),
                         (BertForSequenceClassification(BertConfig(**sizes)), False)):
        model = keep_activations(model).train()  # at N(0, 0.02) the tiny ConvBERT's scores barely move with anything
        caplog.clear()
        with caplog.at_level("WARNING"):
            check_padding(model, (alone, padded), "cpu")
        said = f"{type(model).__name__} scores an input differently with the padding its batch adds" in caplog.text
        assert said is named and model.training  # probed in eval mode, and left as it was


def test_a_token_limit_that_leaves_no_room_for_a_word_is_an_error():
    """--max_seq_length 2 cut every text to [CLS] [SEP]: one answer for every text, exit 0."""
    from transformers import BertConfig, BertForSequenceClassification

    from hftransfer import zoo
    from hftransfer.anatomy import ModelError
    from hftransfer.choices import Choices

    model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=37))
    tokenizer = AutoTokenizer.from_pretrained(zoo.prepare("all-MiniLM-L6-v2"))
    for columns, length, least in (("text", 2, 3), ("premise,hypothesis", 4, 5)):
        task = TextTask(DataArguments(max_seq_length=length, text_column_names=columns))
        with pytest.raises(ModelError, match=f"--max_seq_length {length}: BertTokenizer.* at least {least} "):
            task.adapt_processor(tokenizer, model, {}, Choices())
    TextTask(DataArguments(max_seq_length=3)).adapt_processor(tokenizer, model, {}, Choices())
    assert tokenizer.model_max_length == 3


@pytest.mark.parametrize("pad_id", [0, 1])
def test_a_roberta_position_table_holds_its_offset_fewer_tokens(pad_id):
    """RoBERTa numbers positions after the padding index: 64 rows hold 63 tokens with padding id 0, 62 with id 1.
    At the table's size the longest texts failed the first batch that held one (IndexError)."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from hftransfer import zoo
    from hftransfer.choices import Choices

    model = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, pad_token_id=pad_id)).eval()
    tokenizer = AutoTokenizer.from_pretrained(zoo.prepare("all-MiniLM-L6-v2"))
    TextTask(DataArguments()).adapt_processor(tokenizer, model, {}, Choices())
    assert tokenizer.model_max_length == 63 - pad_id
    longest = tokenizer(["word " * 200], truncation=True, return_tensors="pt")
    assert longest["input_ids"].shape[1] == 63 - pad_id
    with torch.no_grad():
        assert model(input_ids=longest["input_ids"]).logits.shape == (1, 2)
        with pytest.raises((IndexError, RuntimeError)):  # one token more fails, as it did at the limit before
            model(input_ids=torch.cat([longest["input_ids"], longest["input_ids"][:, -1:]], 1))


def test_a_tokenizer_past_the_models_vocabulary_is_an_error_that_names_both():
    from transformers import BertConfig, BertForSequenceClassification

    from hftransfer import zoo
    from hftransfer.anatomy import ModelError
    from hftransfer.choices import Choices

    model = BertForSequenceClassification(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=37))
    tokenizer = AutoTokenizer.from_pretrained(zoo.prepare("all-MiniLM-L6-v2"))
    with pytest.raises(ModelError, match=r"30,422 of the tokenizer's ids \(up to 30,521: .*embedding table of 99 rows"):
        TextTask(DataArguments()).adapt_processor(tokenizer, model, {}, Choices())


def test_a_special_token_past_the_vocabulary_that_encoding_never_adds_is_a_warning(caplog):
    """BART-large-CNN's embedding table ends before its tokenizer's `<mask>`; texts never encode to it."""
    from hftransfer import zoo
    from hftransfer.choices import Choices

    model = tiny_text_model("bert")
    tokenizer = AutoTokenizer.from_pretrained(zoo.prepare("all-MiniLM-L6-v2"))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings + 1
    with caplog.at_level("WARNING"):
        TextTask(DataArguments()).adapt_processor(tokenizer, model, {}, Choices())
    assert "Special tokens '<extra>' lie past BertForSequenceClassification's embedding table" in caplog.text


def _labels_of(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    splits, _ = prepare(train_file=str(tmp_path / name), train_val_split=0.25)
    feature = splits["train"].features["label"]
    return (feature.feature if hasattr(feature, "feature") else feature).names


def test_labels_are_read_as_written(tmp_path, caplog):
    """Each was misread with exit 0: "pos " a class beside "pos"; "None" no label (pandas' missing values);
    "007" and "7" one class "7"; pandas' CSV form of a list column a single-label class a distinct list."""
    def rows(labels):
        return "text,label\n" + "".join(f"text {i},{label}\n" for i, label in enumerate(labels * 4))

    assert _labels_of(tmp_path, "spaces.csv", rows(["pos", "pos ", " neg", "neg"])) == ["neg", "pos"]
    assert _labels_of(tmp_path, "none.csv", rows(["None", "toxic"])) == ["None", "toxic"]  # intent sets' "None"
    for marks in (["toxic", "NA", "None"], ["1", "NA", "0"]):  # R's missing label: an error, as an empty cell
        with pytest.raises(DataError, match=r"4 of 12 rows have an empty label \(blank, or a missing value's mark"):
            _labels_of(tmp_path, "na.csv", rows(marks))
    assert _labels_of(tmp_path, "codes.csv", rows(["007", "7", "010"])) == ["007", "010", "7"]
    assert _labels_of(tmp_path, "numbers.csv", rows(["2", "10", "2"])) == ["2", "10"]  # numbers in numeric order
    lists = ['"[""drama"", ""comedy""]"', "\"['drama']\"", "[]", '"[""comedy""]"']
    assert _labels_of(tmp_path, "lists.csv", rows(lists)) == ["comedy", "drama"]
    with caplog.at_level("WARNING"):
        assert _labels_of(tmp_path, "case.csv", rows(["bad", "Bad", "good"])) == ["Bad", "bad", "good"]
    assert "differ only in case are separate classes: 'Bad' / 'bad'" in caplog.text


def test_a_blank_label_or_a_null_in_a_label_list_is_an_error(tmp_path):
    (tmp_path / "blank.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": v}) + "\n"
                                                  for i, v in enumerate(["pos", "neg", " ", "pos"])))
    with pytest.raises(DataError, match=r"1 of 4 rows have an empty label .*, e.g. row\(s\) 2"):
        prepare(train_file=str(tmp_path / "blank.jsonl"), train_val_split=0.25)
    for bad in (None, ""):
        (tmp_path / "lists.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": v}) + "\n" for i, v in
                                                      enumerate([["a"], ["b", bad], ["a", "b"], []])))
        with pytest.raises(DataError, match=r"row 1 \(from 0\) of column 'label' holds an empty or null label"):
            prepare(train_file=str(tmp_path / "lists.jsonl"), train_val_split=0.25)


def test_pandas_missing_value_words_are_texts_and_a_repeated_header_an_error(tmp_path):
    (tmp_path / "na.csv").write_text("text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in
                                                              enumerate(["NA", "None", "null", "nan", "N/A", "ok"])))
    splits, report = prepare(train_file=str(tmp_path / "na.csv"), train_val_split=0.34)
    assert report.total_skipped == 0
    texts = [*splits["train"]["text"], *splits["validation"]["text"]]
    assert sorted(texts) == ["N/A", "NA", "None", "nan", "null", "ok"]
    (tmp_path / "twice.csv").write_text("text,text,label\na,b,x\nc,d,y\n")
    with pytest.raises(DataError, match="twice.csv: the header names column.s. 'text' more than once"):
        prepare(train_file=str(tmp_path / "twice.csv"), train_val_split=0.5)


def test_an_input_column_named_label_beside_another_label_column_is_an_error(tmp_path):
    """A traceback inside datasets: "New column name label already in the dataset"."""
    (tmp_path / "swap.csv").write_text("label,sentiment\n" + "".join(f"text {i},{i % 2}\n" for i in range(8)))
    with pytest.raises(DataError, match=r"swap.csv \(train\): column 'label' is an input \(--text_column_names\) "
                                        "while the labels come from 'sentiment'"):
        prepare(train_file=str(tmp_path / "swap.csv"), text_column_names="label", label_column_name="sentiment",
                train_val_split=0.25)


def test_a_long_document_in_a_cell_and_excels_blank_header_names_load(tmp_path):
    """The header and code scan (csv module) stopped at 128 KiB a cell, and read Excel's trailing blank column
    names as one name twice."""
    (tmp_path / "long.csv").write_text("text,label,,\n" + "word " * 40_000 + ",a,,\nshort,b,,\nother,a,,\nmore,b,,\n")
    splits, _ = prepare(train_file=str(tmp_path / "long.csv"), train_val_split=0.5)
    assert max(len(t) for t in [*splits["train"]["text"], *splits["validation"]["text"]]) > 131072
