import pytest
import torch
from conftest import IMAGE_FAMILIES, tiny_image_model

from hftransfer import freezing
from hftransfer.freezing import FreezePlan, PatternError


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def head_names(model):
    prefix = model.base_model_prefix
    return {n for n, _ in model.named_parameters() if not n.startswith(prefix + ".")}


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_strategies_select_head_blocks_and_all(family):
    model = tiny_image_model(family)
    all_names = {n for n, _ in model.named_parameters()}
    head = head_names(model)
    assert head and head < all_names

    freezing.apply(model, FreezePlan("feature_extraction"))
    assert trainable_names(model) == head
    trained, total = freezing.trainable_count(model)
    assert trained == sum(p.numel() for n, p in model.named_parameters() if n in head) < total

    freezing.apply(model, FreezePlan("full"))
    assert trainable_names(model) == all_names

    freezing.apply(model, FreezePlan("fine_tune", unfreeze_last_n=1))
    blocks = freezing.block_list_name(model)
    last_block = len(dict(model.named_modules())[blocks]) - 1
    names = trainable_names(model)
    assert head < names
    assert any(n.startswith(f"{blocks}.{last_block}.") for n in names)
    assert not any(n.startswith(f"{blocks}.0.") for n in names)  # earlier blocks stay frozen


def test_blocks_are_found_generically():
    assert freezing.block_list_name(tiny_image_model("mobilenet_v2")) == "mobilenet_v2.layer"
    assert freezing.block_list_name(tiny_image_model("resnet")) == "resnet.encoder.stages"
    assert freezing.block_list_name(tiny_image_model("convnext")) == "convnext.encoder.stages"
    groups = [g.name for g in freezing.param_groups(tiny_image_model("vit"))]
    assert groups[0] == "base.stem" and groups[-1] == "head" and "base.block.3" in groups


def test_glob_and_regex_patterns():
    model = tiny_image_model("mobilenet_v2")
    plan = freezing.apply(model, FreezePlan("feature_extraction", unfreeze=["mobilenet_v2.layer.1[2-5].*"]))
    blocks = {n.split(".")[2] for n in plan.trainable if n.startswith("mobilenet_v2.layer.")}
    assert blocks == {"12", "13", "14", "15"}

    freezing.apply(model, FreezePlan("full", freeze=[r"re:mobilenet_v2\.layer\.\d+\.expand_1x1\..*"]))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(".expand_1x1." in n for n in frozen)


def test_module_prefix_without_wildcard_matches_its_parameters():
    model = tiny_image_model("vit")
    plan = freezing.apply(model, FreezePlan("full", freeze=["vit.embeddings"]))
    assert not any(n.startswith("vit.embeddings.") for n in plan.trainable)
    assert any(n.startswith("vit.layers.") or n.startswith("vit.encoder.") for n in plan.trainable)


def test_pattern_matching_nothing_names_nearest_parameters():
    model = tiny_image_model("mobilenet_v2")
    with pytest.raises(PatternError) as err:
        freezing.apply(model, FreezePlan("feature_extraction", unfreeze=["mobilenet_v2.layers.15.*"]))
    message = str(err.value)
    assert "mobilenet_v2.layers.15.*" in message and "mobilenet_v2.layer" in message
    with pytest.raises(PatternError, match="regular expression"):
        freezing.apply(model, FreezePlan("full", freeze=["re:(unclosed"]))
    with pytest.raises(PatternError, match="only 16 blocks"):
        freezing.apply(model, FreezePlan("fine_tune", unfreeze_last_n=17))


def test_patterns_written_in_the_checkpoint_files_names_match_the_modules_transformers_renamed(tmp_path, caplog):
    """transformers 5 loads ViT's `encoder.layer.N.attention.attention.query` as `layers.N.attention.q_proj` and
    saves it back under the file's name: `--freeze` and `--lora_target_modules` in the file's names (PEFT's ViT
    examples: `query value`) matched nothing."""
    from safetensors import safe_open
    from transformers import ViTForImageClassification

    from hftransfer import lora

    tiny_image_model("vit").save_pretrained(tmp_path)
    model = ViTForImageClassification.from_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as saved:
        file_names = set(saved.keys())
    assert "vit.encoder.layer.1.attention.attention.query.weight" in file_names  # the file's layout, as on the Hub
    assert "vit.layers.1.attention.q_proj.weight" in dict(model.named_parameters())  # the model's

    with caplog.at_level("INFO", logger="hftransfer.freezing"):
        plan = freezing.apply(model, FreezePlan("full", freeze=["vit.encoder.layer.1.*"]))
    frozen = {n for n, _ in model.named_parameters()} - set(plan.trainable)
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith("vit.layers.1.")}
    assert "names the checkpoint files' layout" in caplog.text and "vit.layers.1." in caplog.text
    saved = freezing.saved_names(model)
    assert frozen <= set(saved) and {saved[n] for n in frozen} <= file_names  # read as the file names them

    assert lora.resolve_targets(model, ["query", "value"]) == [f"vit.layers.{i}.attention.{p}_proj"
                                                               for i in range(4) for p in "qv"]
    assert lora.resolve_targets(model, ["re:.*layer\\.0\\.attention\\.attention\\.key"]) == [
        "vit.layers.0.attention.k_proj"]
    with pytest.raises(PatternError, match="matches no parameter"):  # in neither layout
        freezing.apply(model, FreezePlan("full", freeze=["vit.encoder.layers.1.*"]))
    # a pattern in both namings names all it says (it froze the embeddings alone, and layer 0 trained)
    plan = freezing.apply(model, FreezePlan("full", freeze=[r"re:vit\.(embeddings|encoder\.layer\.0)(\..*)?"]))
    frozen = {n for n, _ in model.named_parameters()} - set(plan.trainable)
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith(("vit.embeddings.", "vit.layers.0."))}


def test_the_checkpoint_files_names_are_read_once_per_resolution(tmp_path, monkeypatch):
    """The names map is a pass over every parameter through transformers' reverse mapping; it was built again for
    every pattern (up to four times for one LoRA target), not once for all of a resolution's patterns."""
    from transformers import ViTForImageClassification

    from hftransfer import lora

    tiny_image_model("vit").save_pretrained(tmp_path)
    model = ViTForImageClassification.from_pretrained(tmp_path)
    built = []
    real = freezing.saved_names
    monkeypatch.setattr(freezing, "saved_names", lambda *args: built.append(1) or real(*args))
    monkeypatch.setattr(lora, "saved_names", freezing.saved_names, raising=False)

    targets = lora.resolve_targets(model, ["query", "value", "vit.encoder.layer.0.output.dense"])
    assert len(targets) == 9 and "vit.layers.0.mlp.fc2" in targets
    assert len(built) == 1
    built.clear()
    plan = FreezePlan("full", freeze=["vit.encoder.layer.1.*", "vit.embeddings.*"], unfreeze=["vit.layers.1.mlp.*"],
                      lr_multipliers=["*.attention.query=2", "*.attention.key=3"])
    trainable = freezing.resolve(model, plan)
    assert "vit.layers.1.mlp.fc2.weight" in trainable and "vit.layers.1.attention.q_proj.weight" not in trainable
    assert len(built) == 1
    factors = freezing.lr_factors(model, plan)
    assert factors["vit.layers.2.attention.k_proj.weight"] == 3 * factors["vit.layers.2.attention.v_proj.weight"]
    assert len(built) == 2
    freezing.resolve(model, FreezePlan("full"))
    freezing.lr_factors(model, FreezePlan("full"))
    assert len(built) == 2  # no pattern: no map


def _bn_stats(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running_" in n}


def _train_steps(model, steps=3):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(steps):
        model.train()  # as the Trainer does before every step
        x = torch.randn(4, 3, 32, 32) * 3 + 1  # far from the stored statistics
        loss = model(pixel_values=x, labels=torch.tensor([0, 1, 2, 0])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_frozen_batchnorm_keeps_its_statistics():
    model = tiny_image_model("mobilenet_v2")
    before = _bn_stats(model)
    freezing.apply(model, FreezePlan("feature_extraction"))
    _train_steps(model)
    after = _bn_stats(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    # control: once trainable, the same steps do move them, with momentum reset from HF's 0.997 to 0.1
    freezing.apply(model, FreezePlan("full"))
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.momentum == pytest.approx(0.1)
    _train_steps(model)
    moved = _bn_stats(model)
    assert any(not torch.equal(after[n], moved[n]) for n in after)


def test_freeze_bn_stats_keeps_statistics_while_batchnorm_weights_train():
    model = tiny_image_model("mobilenet_v2")
    before = _bn_stats(model)
    weights = {n: p.clone() for n, p in model.named_parameters() if "normalization" in n}
    freezing.apply(model, FreezePlan("full"), freeze_bn_stats=True)
    _train_steps(model)
    after = _bn_stats(model)
    assert all(torch.equal(before[n], after[n]) for n in before)  # inference mode: the pretrained statistics
    moved = dict(model.named_parameters())
    assert any(not torch.equal(weights[n], moved[n]) for n in weights)  # the BN scale and shift still learn
    freezing.apply(model, FreezePlan("full"))  # switched back: statistics follow the batches again
    _train_steps(model)
    assert any(not torch.equal(after[n], b) for n, b in _bn_stats(model).items())


def _features(model, x, batch_statistics=()):
    """The base's pooled output with the BatchNorm layers named in `batch_statistics` normalising with `x`'s own
    statistics and every other one in inference mode; the running statistics are left as they were."""
    model.eval()
    modules = [model.get_submodule(n) for n in batch_statistics]
    for module in modules:
        module.training = True
    before = _bn_stats(model)
    with freezing._unpinned(modules), torch.no_grad():
        features = model.base_model(pixel_values=x).pooler_output
    for name, buffer in model.named_buffers():
        if name in before:
            buffer.copy_(before[name])
    return features


def test_calibration_makes_running_statistics_those_the_trained_layers_will_see():
    torch.manual_seed(0)
    model = tiny_image_model("mobilenet_v2")
    x = torch.rand(96, 3, 32, 32) * 0.5 + 0.8  # unlike the stored statistics (means 0, variances 1)
    freezing.apply(model, FreezePlan("feature_extraction"))  # the head stage: every BatchNorm pinned to eval
    plan = FreezePlan("fine_tune", unfreeze_last_n=1)
    names = freezing.batchnorm_to_train(model, plan)
    all_bn = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert names and set(names) < set(all_bn)
    untouched = {n: b for n, b in _bn_stats(model).items() if n.rsplit(".", 1)[0] not in names}
    weights = {n: p.clone() for n, p in model.named_parameters()}
    stage_two = _features(model, x, names)  # what stage 2 will see: its layers on batch statistics
    gap_before = (_features(model, x) - stage_two).norm() / stage_two.norm()
    momentum = model.get_submodule(names[0]).momentum

    freezing.calibrate_batchnorm(model, names, [{"pixel_values": x[:48]}, {"pixel_values": x[48:]}])
    gap_after = (_features(model, x) - stage_two).norm() / stage_two.norm()
    # what remains: unbiased against biased variance, and two batches averaged against one
    assert gap_before > 0.5 and gap_after < 0.05
    assert all(torch.equal(b, _bn_stats(model)[n]) for n, b in untouched.items())
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    bn = model.get_submodule(names[0])
    assert bn.momentum == momentum and bn._hftransfer_eval_hook is not None  # still pinned for stage 1
    calibrated = _bn_stats(model)
    _train_steps(model)  # stage 1 trains the head: the calibrated statistics stay
    assert all(torch.equal(b, calibrated[n]) for n, b in _bn_stats(model).items())


def test_batchnorm_to_train_follows_the_plan():
    model = tiny_image_model("mobilenet_v2")
    all_bn = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert freezing.batchnorm_to_train(model, FreezePlan("full")) == all_bn
    assert freezing.batchnorm_to_train(model, FreezePlan("feature_extraction")) == []
    assert freezing.batchnorm_to_train(model, FreezePlan("full"), freeze_bn_stats=True) == []
    assert freezing.batchnorm_to_train(tiny_image_model("vit"), FreezePlan("full")) == []  # LayerNorm: nothing


def test_plan_round_trip_and_report(tmp_path):
    model = tiny_image_model("vit")
    plan = freezing.apply(model, FreezePlan("fine_tune", unfreeze_last_n=2, freeze=["vit.layernorm"]))
    loaded = FreezePlan.load(plan.save(tmp_path))
    assert loaded == plan
    again = tiny_image_model("vit")
    freezing.apply(again, FreezePlan(loaded.strategy, loaded.freeze, loaded.unfreeze, loaded.unfreeze_last_n))
    assert trainable_names(again) == set(loaded.trainable)
    text = freezing.report(model, plan)
    assert "strategy=fine_tune" in text and "head" in text and "total" in text
    total_line = text.splitlines()[-1].split()
    assert int(total_line[3].replace(",", "")) == freezing.trainable_count(model)[0]


def test_layer_lr_decay_and_multipliers_give_each_group_its_rate(tmp_path):
    from transformers import TrainingArguments

    from hftransfer.trainer import TransferTrainer

    model = tiny_image_model("vit")  # 4 blocks
    plan = freezing.apply(model, FreezePlan("full", layer_lr_decay=0.5, lr_multipliers=["vit.embeddings.*=0.1"]))
    factors = freezing.lr_factors(model, plan)
    assert factors["classifier.weight"] == 1.0 and factors["vit.layernorm.weight"] == 1.0
    last, first = freezing.block_list_name(model) + ".3.", freezing.block_list_name(model) + ".0."
    assert {factors[n] for n in factors if n.startswith(last)} == {0.5}
    assert {factors[n] for n in factors if n.startswith(first)} == {0.5 ** 4}
    assert factors["vit.embeddings.cls_token"] == pytest.approx(0.5 ** 5 * 0.1)

    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.01, report_to="none",
                             use_cpu=True)
    optimizer = TransferTrainer(model=model, args=args, plan=plan).create_optimizer()
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert rate[id(named["classifier.weight"])] == pytest.approx(1e-3)
    assert rate[id(named["vit.embeddings.cls_token"])] == pytest.approx(1e-3 * 0.5 ** 5 * 0.1)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named)
    # FSDP version 1 (and torch.compile) wrap the model after the trainer is made and put their segment in every
    # parameter's name: the factors still reach each parameter by its original name
    trainer = TransferTrainer(model=model, args=args, plan=plan)
    wrapped = torch.nn.Module()
    wrapped._fsdp_wrapped_module = model
    rate = {id(p): g["lr"] for g in trainer.create_optimizer(wrapped).param_groups for p in g["params"]}
    assert rate[id(named["vit.embeddings.cls_token"])] == pytest.approx(1e-3 * 0.5 ** 5 * 0.1)
    assert rate[id(named["classifier.weight"])] == pytest.approx(1e-3)
    wrapped.flat_param = torch.nn.Parameter(torch.zeros(3))  # as FSDP 1 without use_orig_params names its shards
    trainer.optimizer = None
    with pytest.raises(ValueError, match="'flat_param'.*fsdp_use_orig_params"):
        trainer.create_optimizer(wrapped)
    text = freezing.report(model, plan)
    assert "lr x" in text and "layer_lr_decay=0.5" in text
    row = next(line for line in text.splitlines() if line.startswith("base.block.3"))
    assert row.split()[-1] == "0.5"
    with pytest.raises(PatternError, match="PATTERN=FACTOR"):
        freezing.lr_factors(model, FreezePlan("full", lr_multipliers=["vit.embeddings=fast"]))


def test_fine_tune_without_a_block_count_trains_the_one_block_albert_has():
    """ALBERT shares one layer group: fine_tune's default (the last 2 blocks) takes the one there is; asking for 2
    by name is an error that quotes the flag."""
    from transformers import AlbertConfig, AlbertForSequenceClassification

    model = AlbertForSequenceClassification(AlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32,
                                                         num_hidden_layers=2, num_attention_heads=2,
                                                         intermediate_size=37))
    trains = freezing.resolve(model, FreezePlan("fine_tune"))
    assert any(".albert_layer_groups.0." in name for name in trains)
    assert not any("embeddings" in name for name in trains)
    with pytest.raises(PatternError, match=r"^--unfreeze_last_n 2: the base has only 1 blocks"):
        freezing.resolve(model, FreezePlan("fine_tune", unfreeze_last_n=2))
