"""Every automatic choice made once, in `choices`, and recorded with its reason; what the user gave is never chosen."""

import pytest
import torch
from conftest import tiny_image_model, tiny_text_model
from datasets import Dataset

from hftransfer.anatomy import ModelError
from hftransfer.args import DataArguments, parse_args
from hftransfer.choices import (ADVERSARIAL_EPSILON, ADVERSARIAL_MIN_STEPS, BASE_DEFAULTS, EARLY_STOPPING_PATIENCE,
                                HEAD_ONLY_WEIGHT_DECAY, RDROP_MAX_EXAMPLES, RDROP_WEIGHT, Choices, choose_columns,
                                choose_for_model, choose_stages)
from hftransfer.freezing import PatternError
from hftransfer.tasks import TextTask


def stages(argv, model, train_size=640):
    choices = Choices()
    return choose_stages(parse_args(argv), model, train_size, head_stage=True, choices=choices), choices.to_dict()


def test_stage_rates_and_epochs_are_chosen_from_the_model_and_data_size_with_reasons():
    (head, base), chosen = stages([], tiny_image_model("mobilenet_v2"))  # 640 examples, batch 32: 20 steps an epoch
    assert (head.kind, base.kind) == ("head", "base")
    assert base.learning_rate == BASE_DEFAULTS["conv"]["learning_rate"] == chosen["learning_rate (staged)"]["value"]
    assert head.epochs == 15.0 and base.epochs == 25.0  # 300 and 500 steps
    assert head.patience == base.patience == chosen["early_stopping_patience"]["value"] == EARLY_STOPPING_PATIENCE
    assert chosen["epochs (head)"]["value"] == 15.0 and "300 steps" in chosen["epochs (head)"]["reason"]
    (_, text_base), _ = stages([], tiny_text_model("bert"))
    assert text_base.learning_rate == BASE_DEFAULTS["attention"]["learning_rate"]


def test_what_the_user_gave_is_used_and_not_recorded_as_chosen():
    argv = ["--learning_rate", "5e-4", "--num_train_epochs", "2", "--head_epochs", "4",
            "--early_stopping_patience", "3", "--rdrop_weight", "0.3", "--adversarial_epsilon", "0"]
    (head, base), chosen = stages(argv, tiny_image_model("mobilenet_v2"))
    assert (head.epochs, base.epochs, base.learning_rate, head.patience, base.patience) == (4, 2, 5e-4, 3, 3)
    assert base.rdrop_weight == 0.3
    assert chosen == {}


def test_r_drop_is_off_for_multi_label_data_and_a_weight_given_is_said_to_do_nothing(caplog):
    model = tiny_text_model("bert")
    model.config.problem_type = "multi_label_classification"  # as `modeling.load_model` sets it
    (_, base), chosen = stages([], model)
    assert base.rdrop_weight == 0.0 and "multi-label" in chosen["rdrop_weight"]["reason"]
    (_, base), chosen = stages(["--rdrop_weight", "2"], model)
    assert base.rdrop_weight == 0.0 and "rdrop_weight" not in chosen
    assert "--rdrop_weight 2 has no effect: R-Drop applies to single-label data only" in caplog.text


def test_max_steps_and_gradient_accumulation_count_in_optimizer_steps():
    # 640 examples in batches of 32, two batches a step: 10 optimizer steps an epoch (the base: 50, capped at 30)
    (head, base), chosen = stages(["--gradient_accumulation_steps", "2"], tiny_image_model("mobilenet_v2"))
    assert (head.epochs, base.epochs) == (30.0, 30.0)
    assert "300 steps of 10 an epoch" in chosen["epochs (head)"]["reason"]
    # the Trainer stops each stage after 5 steps, whatever its epochs: the log and the record say what those are
    (head, base), chosen = stages(["--max_steps", "5", "--num_train_epochs", "3"], tiny_image_model("mobilenet_v2"))
    assert head.epochs == base.epochs == 0.25 and not [name for name in chosen if name.startswith("epochs")]


def test_a_head_that_is_the_final_model_gets_more_weight_decay_and_a_head_before_fine_tuning_does_not():
    flag_default = parse_args([]).training.weight_decay
    (head,), chosen = stages(["--strategy", "feature_extraction"], tiny_text_model("bert"))
    assert head.weight_decay == HEAD_ONLY_WEIGHT_DECAY == chosen["weight_decay (head)"]["value"] != flag_default
    (head, base), chosen = stages([], tiny_text_model("bert"))  # staged: the fine-tuning starts from this head
    assert head.weight_decay == base.weight_decay == flag_default
    assert not [name for name in chosen if name.startswith("weight_decay")]
    (head,), chosen = stages(["--strategy", "feature_extraction", "--weight_decay", "0.05"], tiny_image_model("vit"))
    assert head.weight_decay == 0.05 and "weight_decay (head)" not in chosen


def test_r_drop_is_chosen_for_attention_models_on_small_data_in_the_stages_that_train_the_base():
    bert = tiny_text_model("bert")
    (head, base), chosen = stages([], bert)
    assert (head.rdrop_weight, base.rdrop_weight) == (0.0, RDROP_WEIGHT) and RDROP_WEIGHT > 0
    assert chosen["rdrop_weight"]["value"] == RDROP_WEIGHT
    assert "640 training examples" in chosen["rdrop_weight"]["reason"]
    (_, large), chosen = stages([], bert, train_size=RDROP_MAX_EXAMPLES + 1)
    assert large.rdrop_weight == 0.0 == chosen["rdrop_weight"]["value"]
    (_, conv), _ = stages([], tiny_image_model("mobilenet_v2"))
    assert conv.rdrop_weight == 0.0
    (_, given), chosen = stages(["--rdrop_weight", "0.5"], tiny_image_model("mobilenet_v2"))
    assert given.rdrop_weight == 0.5 and "rdrop_weight" not in chosen
    (only_head,), chosen = stages(["--strategy", "feature_extraction"], bert)
    assert only_head.rdrop_weight == 0.0 and "rdrop_weight" not in chosen
    for module in bert.modules():  # two passes without dropout are the same pass
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    (_, without), chosen = stages([], bert)
    assert without.rdrop_weight == 0.0 and "without dropout" in chosen["rdrop_weight"]["reason"]
    for strategy in ("staged", "feature_extraction"):
        with pytest.raises(SystemExit, match="--rdrop_weight -1.0: must be 0 or more"):
            stages(["--rdrop_weight", "-1", "--strategy", strategy], bert)


def test_an_r_drop_weight_that_no_stage_uses_is_said(caplog):
    (only_head,), _ = stages(["--strategy", "feature_extraction", "--rdrop_weight", "1"], tiny_text_model("bert"))
    assert only_head.rdrop_weight == 0.0 and "--rdrop_weight 1 has no effect" in caplog.text


def test_adversarial_training_is_chosen_for_models_that_read_tokens_on_small_data(caplog):
    bert = tiny_text_model("bert")
    (head, base), chosen = stages([], bert)
    assert (head.adversarial_epsilon, base.adversarial_epsilon) == (0.0, ADVERSARIAL_EPSILON) and ADVERSARIAL_EPSILON
    assert "640 training examples" in chosen["adversarial_epsilon"]["reason"]
    (_, large), chosen = stages([], bert, train_size=RDROP_MAX_EXAMPLES + 1)
    assert large.adversarial_epsilon == 0.0 == chosen["adversarial_epsilon"]["value"]
    for image_model in (tiny_image_model("vit"), tiny_image_model("mobilenet_v2")):  # patches and pixels: no tokens
        (_, base), chosen = stages([], image_model)
        assert base.adversarial_epsilon == 0.0 and "no token embedding table" in chosen["adversarial_epsilon"]["reason"]
        with pytest.raises(ModelError, match=f"--adversarial_epsilon 0.2: {type(image_model).__name__} has no token"):
            stages(["--adversarial_epsilon", "0.2"], image_model)
    (_, given), chosen = stages(["--adversarial_epsilon", "0.2"], bert)
    assert given.adversarial_epsilon == 0.2 and "adversarial_epsilon" not in chosen
    (only_head,), chosen = stages(["--strategy", "feature_extraction", "--adversarial_epsilon", "0.2"], bert)
    assert only_head.adversarial_epsilon == 0.0 and "--adversarial_epsilon 0.2 has no effect" in caplog.text
    with pytest.raises(SystemExit, match="--adversarial_epsilon -0.1: must be 0 or more"):
        stages(["--adversarial_epsilon", "-0.1"], bert)


def test_adversarial_training_gets_more_fine_tuning_steps():
    bert = tiny_text_model("bert")  # 640 examples, batch 32: 20 steps an epoch
    (head, base), chosen = stages([], bert)
    assert (head.epochs, base.epochs) == (15.0, ADVERSARIAL_MIN_STEPS / 20)
    assert "adversarial training learns more slowly" in chosen["epochs (staged)"]["reason"]
    (_, plain), chosen = stages(["--adversarial_epsilon", "0"], bert)
    assert plain.epochs == BASE_DEFAULTS["attention"]["min_steps"] / 20 < base.epochs
    assert "adversarial" not in chosen["epochs (staged)"]["reason"]


def test_adversarial_training_is_off_under_fsdp_and_an_error_when_asked_for(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # as `accelerate launch` with an FSDP config sets it
    bert = tiny_text_model("bert")
    (_, base), chosen = stages([], bert)
    assert base.adversarial_epsilon == 0.0 and "FSDP" in chosen["adversarial_epsilon"]["reason"]
    with pytest.raises(ValueError, match="--adversarial_epsilon 0.1: not supported under FSDP"):
        stages(["--adversarial_epsilon", "0.1"], bert)


def test_lora_stages_get_the_adapters_rate_and_the_user_patterns_shape_the_last_stage():
    (head, adapters), chosen = stages(["--strategy", "lora", "--unfreeze", "classifier"],
                                      tiny_image_model("mobilenet_v2"))
    assert adapters.kind == "adapters" and adapters.plan.strategy == "lora" and adapters.plan.unfreeze == ["classifier"]
    assert head.plan.unfreeze == []  # the head stage trains the head alone
    assert chosen["learning_rate (lora)"]["value"] == 2e-3


def test_columns_are_chosen_only_where_unnamed_and_unambiguous():
    data = Dataset.from_dict({"id": [1, 2], "sentence": ["good", "bad"], "Sentiment": ["pos", "neg"]})
    args, choices = DataArguments(), Choices()
    resolved = choose_columns(data.column_names, data.features, args, TextTask(args), frozenset(), choices)
    assert (resolved.text_column_names, resolved.label_column_name) == ("sentence", "Sentiment")
    assert (args.text_column_names, args.label_column_name) == ("text", "label")  # the parsed settings stay as given
    assert set(choices.to_dict()) == {"text_column_names", "label_column_name"}
    named = choose_columns(data.column_names, data.features, args, TextTask(args), frozenset({"text_column_names"}),
                           Choices())
    assert named.text_column_names == "text"


def test_decoders_get_lora_and_texts_get_grouped_batches_unless_given():
    model = tiny_text_model("bert")
    choices = Choices()
    run = choose_for_model(parse_args([]), model, True, {"train": [3, 5, 1]}, choices)
    assert run.transfer.strategy == "lora" and run.training.train_sampling_strategy == "group_by_length"
    assert "decoder" in choices.to_dict()["strategy"]["reason"]
    given = choose_for_model(parse_args(["--strategy", "full", "--train_sampling_strategy", "random"]), model, True,
                             {"train": [3, 5, 1]}, Choices())
    assert given.transfer.strategy == "full" and given.training.train_sampling_strategy == "random"
    images = choose_for_model(parse_args([]), model, False, {"train": None}, Choices())
    assert images.training.train_sampling_strategy != "group_by_length"
    blocks = choose_for_model(parse_args(["--unfreeze_last_n", "2"]), model, True, {"train": [3]}, Choices())
    assert blocks.transfer.strategy == "staged"  # LoRA would leave the named blocks frozen


@pytest.mark.parametrize("strategy", ["feature_extraction", "full", "lora"])
def test_unfreeze_last_n_with_a_strategy_that_cannot_use_it_is_an_error_that_names_both(strategy):
    """Feature extraction would quietly become fine-tuning, full trains every block anyway, and PEFT refreezes the
    named blocks under LoRA: each is refused before anything trains."""
    model = tiny_text_model("bert")
    with pytest.raises(PatternError, match=f"--unfreeze_last_n 2 does not apply to --strategy {strategy}: "):
        stages(["--strategy", strategy, "--unfreeze_last_n", "2"], model)
    assert stages(["--strategy", strategy, "--unfreeze_last_n", "0"], model)[0]  # 0 names no block
    (tune,), _ = stages(["--strategy", "fine_tune", "--unfreeze_last_n", "2"], model)
    assert tune.plan.unfreeze_last_n == 2


def test_augment_with_cached_features_is_said_and_applies_where_it_can(caplog):
    model = tiny_image_model("mobilenet_v2")

    def plan_stages(run):
        return choose_stages(run, model, train_size=64, head_stage=True, choices=Choices())

    with caplog.at_level("WARNING", logger="hftransfer.choices"):
        head, tune = plan_stages(parse_args(["--augment", "true"]))
    assert not head.augment and tune.augment  # the cache holds un-augmented inputs; the base's stage augments
    assert "un-augmented" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hftransfer.choices"):  # (the choices themselves are logged at INFO)
        (head,) = plan_stages(parse_args(["--augment", "true", "--strategy", "feature_extraction",
                                          "--cache_features", "false"]))
    assert head.augment and not caplog.text  # no cache: every epoch sees new crops


def test_lora_under_fsdp_trains_its_head_with_the_adapters_in_one_stage(monkeypatch):
    """PEFT cannot wrap a model an earlier stage's FSDP has sharded (seen on an H200): under FSDP, LoRA has no
    head-only stage; `staged` keeps its two."""
    model = tiny_text_model("bert")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert [s.kind for s in stages(["--strategy", "lora"], model)[0]] == ["head", "adapters"]
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    sharded, chosen = stages(["--strategy", "lora"], model)
    assert [s.kind for s in sharded] == ["adapters"]
    assert chosen["head_stage"]["value"] is False and "PEFT cannot wrap" in chosen["head_stage"]["reason"]
    assert [s.kind for s in stages(["--strategy", "staged"], model)[0]] == ["head", "base"]
