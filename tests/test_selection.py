"""Validation while training: every epoch evaluated, each stage's best epoch kept, early stopping; class weights."""

import json

import pytest
import torch
from conftest import make_image_folder, save_tiny_checkpoint, tiny_text_model
from transformers import TrainerControl, TrainerState
from transformers.modeling_outputs import SequenceClassifierOutput

from hftransfer.args import parse_args
from hftransfer.choices import IMBALANCE_RATIO, Choices, choose_for_labels
from hftransfer.selection import BestEpoch, ClassLoss
from hftransfer.tasks import ImageTask
from hftransfer.trainer import TransferTrainer
from hftransfer.training import TransferRun


def evaluate(callback, model, epoch, accuracy, loss=1.0):
    state, control = TrainerState(epoch=epoch), TrainerControl()
    callback.on_evaluate(None, state, control, metrics={"eval_accuracy": accuracy, "eval_loss": loss}, model=model)
    return control


def test_the_best_evaluation_is_put_back_and_patience_stops_the_stage():
    model = torch.nn.Linear(3, 2)
    callback = BestEpoch("accuracy", patience=2)
    weights = []
    for epoch, accuracy in enumerate([0.5, 0.8, 0.7, 0.8], start=1):  # a tie is no improvement (same loss)
        with torch.no_grad():
            model.weight.add_(1.0)
        weights.append(model.weight.detach().clone())
        control = evaluate(callback, model, epoch, accuracy)
        assert control.should_training_stop == (epoch == 4)
    callback.on_train_end(None, TrainerState(), TrainerControl(), model=model)
    assert torch.equal(model.weight, weights[1])
    assert callback.summary()["best_epoch"] == 2 and callback.summary()["last_evaluated_epoch"] == 4


def test_a_tie_goes_to_the_lower_loss_and_nothing_is_kept_when_asked():
    model = torch.nn.Linear(3, 2)
    callback = BestEpoch("accuracy", patience=0, keep=False)
    evaluate(callback, model, 1, 0.8, loss=0.9)
    evaluate(callback, model, 2, 0.8, loss=0.5)
    with torch.no_grad():
        model.weight.zero_()
    callback.on_train_end(None, TrainerState(), TrainerControl(), model=model)
    assert callback.summary()["best_epoch"] == 2
    assert torch.count_nonzero(model.weight) == 0  # --keep_best_epoch false: the last weights stay


@pytest.mark.parametrize(("counts", "weights", "metric"), [([60, 20, 6], "logit_adjusted", "f1_macro"),
                                                           ([50, 40, 30], "none", "accuracy")])
def test_class_weights_and_the_selection_metric_follow_the_imbalance(counts, weights, metric):
    choices = Choices()
    run = choose_for_labels(parse_args([]), counts, choices)
    assert run.transfer.class_weights == weights and run.training.metric_for_best_model == metric
    assert f"{max(counts) / min(counts):.1f} times" in choices.to_dict()["class_weights"]["reason"]
    assert (max(counts) / min(counts) >= IMBALANCE_RATIO) == (weights == "logit_adjusted")


def test_what_the_user_gave_wins_over_the_imbalance():
    run = choose_for_labels(parse_args(["--class_weights", "none", "--metric_for_best_model", "accuracy"]),
                            [100, 1], Choices())
    assert (run.transfer.class_weights, run.training.metric_for_best_model) == ("none", "accuracy")
    multi = choose_for_labels(parse_args([]), None, Choices())
    assert (multi.transfer.class_weights, multi.training.metric_for_best_model) == ("none", "f1_macro")


class Classifier(torch.nn.Module):
    def __init__(self, linear, dropout: float = 0.0):
        super().__init__()
        self.linear, self.dropout = linear, torch.nn.Dropout(dropout)

    def forward(self, x, labels=None):
        logits = self.linear(self.dropout(x))
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


@pytest.mark.parametrize("mode", ["balanced", "logit_adjusted"])
def test_the_class_loss_in_training_and_the_plain_loss_in_evaluation(tmp_path, mode):
    model = torch.nn.Linear(4, 3)
    class_loss = ClassLoss.for_counts(mode, [6, 2, 1])
    trainer = TransferTrainer(model=Classifier(model), class_loss=class_loss, args=parse_args(
        ["--output_dir", str(tmp_path), "--eval_strategy", "no"]).training)
    inputs = {"x": torch.randn(5, 4), "labels": torch.tensor([0, 0, 1, 2, 2])}
    logits = model(inputs["x"])
    if mode == "balanced":  # scikit-learn's "balanced": n / (classes x n_class)
        expected = torch.nn.functional.cross_entropy(logits, inputs["labels"], weight=torch.tensor([0.5, 1.5, 3.0]))
    else:  # log class frequencies added to the logits
        expected = torch.nn.functional.cross_entropy(logits + torch.log(torch.tensor([6, 2, 1]) / 9), inputs["labels"])
    trainer.model.train()
    assert torch.allclose(trainer.compute_loss(trainer.model, inputs), expected)
    trainer.model.eval()
    plain = torch.nn.functional.cross_entropy(logits, inputs["labels"])
    assert torch.allclose(trainer.compute_loss(trainer.model, inputs), plain)
    assert ClassLoss.for_counts("none", [6, 2, 1]) is None and ClassLoss.for_counts(mode, None) is None


def run_tiny(tmp_path, *flags, classes=("square", "hstripes", "vstripes"), per_class=12, kind="vit"):
    train = make_image_folder(tmp_path / "train", per_class, classes=classes, seed=0)
    validation = make_image_folder(tmp_path / "validation", 6, classes=classes, seed=1)
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", kind, num_labels=len(classes))
    out = tmp_path / "out"
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_dir", str(train), "--validation_dir",
                      str(validation), "--output_dir", str(out), "--disable_tqdm", "true", "--check_data", "false",
                      *flags])
    transfer = TransferRun(run, ImageTask(run.data))
    return transfer.execute(), json.loads((out / "hftransfer_run.json").read_text()), out


def test_every_epoch_is_validated_and_the_saved_model_is_the_best_epochs(tmp_path):
    metrics, record, out = run_tiny(tmp_path, "--head_epochs", "4", "--num_train_epochs", "4", "--learning_rate",
                                    "3e-3", "--early_stopping_patience", "0")
    for stage in record["stages"]:
        evaluated = [entry["epoch"] for entry in stage["log"] if "eval_accuracy" in entry]
        assert evaluated == [1.0, 2.0, 3.0, 4.0]
        assert stage["metrics"]["best_epoch"] in evaluated
    last = record["stages"][-1]
    logged = {entry["epoch"]: entry["eval_accuracy"] for entry in last["log"] if "eval_accuracy" in entry}
    # the final evaluation is of the kept epoch: its score, not the last epoch's unless that was the best
    assert metrics["eval_accuracy"] == pytest.approx(logged[last["metrics"]["best_epoch"]])
    assert metrics["eval_accuracy"] == pytest.approx(max(logged.values()))
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"])
    assert "best epoch (kept)" in (out / "report" / "report.md").read_text()


def test_a_stage_that_stops_improving_stops_early(tmp_path):
    _, record, _ = run_tiny(tmp_path, "--strategy", "feature_extraction", "--head_epochs", "6",
                            "--head_learning_rate", "0", "--early_stopping_patience", "2")
    (head,) = record["stages"]
    evaluated = [entry["epoch"] for entry in head["log"] if "eval_accuracy" in entry]
    assert evaluated == [1.0, 2.0, 3.0]  # nothing learns at rate 0: two evaluations without improvement
    assert head["metrics"]["best_epoch"] == 1.0


def test_a_resumed_stage_selects_as_if_it_had_never_stopped(tmp_path):
    model = torch.nn.Linear(3, 2)
    args = parse_args(["--output_dir", str(tmp_path)]).training
    first = BestEpoch("accuracy", patience=3)
    evaluate(first, model, 1, 0.9)
    best = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    evaluate(first, model, 2, 0.5)
    first.save_to(tmp_path / "checkpoint-8")  # a checkpoint, then the process is killed
    resumed = BestEpoch("accuracy", patience=3)
    resumed.on_train_begin(args, TrainerState(global_step=8), TrainerControl())
    assert evaluate(resumed, model, 3, 0.6).should_training_stop is False
    assert evaluate(resumed, model, 4, 0.6).should_training_stop is True  # 3 without improvement, 2 before the kill
    resumed.on_train_end(args, TrainerState(), TrainerControl(), model=model)
    assert torch.equal(model.weight, best) and resumed.summary()["best_epoch"] == 1


def test_validating_every_epoch_does_not_change_the_training(tmp_path):
    flags = ("--head_epochs", "3", "--num_train_epochs", "2", "--keep_best_epoch", "false",
             "--early_stopping_patience", "0")
    torch.manual_seed(0)  # the same random-init checkpoint for both; its head has dropout, which draws randomness
    _, validated, _ = run_tiny(tmp_path / "epoch", *flags, kind="mobilenet_v2")
    torch.manual_seed(0)
    _, once, _ = run_tiny(tmp_path / "no", *flags, "--eval_strategy", "no", kind="mobilenet_v2")

    def losses(record):
        return [[entry["loss"] for entry in stage["log"] if "loss" in entry] for stage in record["stages"]]
    assert sum("eval_loss" in entry for stage in validated["stages"] for entry in stage["log"]) == 5
    assert losses(validated) == losses(once)  # the same shuffles and dropout masks


def test_r_drop_adds_the_symmetric_kl_of_two_dropout_passes_to_their_mean_loss_in_training_only(tmp_path):
    linear = torch.nn.Linear(8, 3)
    trainer = TransferTrainer(model=Classifier(linear, dropout=0.5), rdrop_weight=0.7, args=parse_args(
        ["--output_dir", str(tmp_path), "--eval_strategy", "no"]).training)
    inputs = {"x": torch.randn(6, 8), "labels": torch.tensor([0, 1, 2, 0, 1, 2])}
    trainer.model.train()
    torch.manual_seed(0)
    loss = trainer.compute_loss(trainer.model, inputs)
    torch.manual_seed(0)  # the same two dropout masks, drawn as one doubled batch
    first, second = trainer.model(torch.cat([inputs["x"], inputs["x"]])).logits.chunk(2)
    cross_entropy = sum(torch.nn.functional.cross_entropy(each, inputs["labels"]) for each in (first, second)) / 2
    p, q = first.softmax(-1), second.softmax(-1)
    kl = ((p * (p.log() - q.log())).sum(-1) + (q * (q.log() - p.log())).sum(-1)).mean() / 2
    assert kl > 0.01  # the two passes had different masks
    assert torch.allclose(loss, cross_entropy + 0.7 * kl, atol=1e-6)
    trainer.model.eval()
    plain = torch.nn.functional.cross_entropy(linear(inputs["x"]), inputs["labels"])
    assert torch.allclose(trainer.compute_loss(trainer.model, inputs), plain)


@pytest.mark.parametrize("multi_label", [False, True])
def test_adversarial_training_adds_the_loss_of_a_pass_with_the_embeddings_moved_along_the_gradient(multi_label,
                                                                                                   tmp_path):
    model = tiny_text_model("bert")
    for module in model.modules():  # the same pass each time, to recompute it by hand
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    table = model.bert.embeddings.word_embeddings
    table.weight.requires_grad_(False)  # frozen embeddings are perturbed all the same
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]) if multi_label else torch.tensor([0, 1, 1])
    if multi_label:
        model.config.problem_type = "multi_label_classification"
    trainer = TransferTrainer(model=model, adversarial_epsilon=0.5, args=parse_args(
        ["--output_dir", str(tmp_path), "--eval_strategy", "no"]).training)
    inputs = {"input_ids": torch.randint(1, 1000, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long),
              "labels": labels}
    model.train()
    loss = trainer.compute_loss(model, inputs)  # back-propagates the first pass itself; the Trainer does the rest
    loss.backward()
    step_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    def label_loss(embedded):
        logits = model(inputs_embeds=embedded, attention_mask=inputs["attention_mask"]).logits
        if multi_label:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        return torch.nn.functional.cross_entropy(logits, labels)
    embedded = table(inputs["input_ids"]).detach().requires_grad_()
    plain = label_loss(embedded)
    grad, = torch.autograd.grad(plain, embedded, retain_graph=True)
    moved = label_loss(embedded + 0.5 * grad / grad.flatten(1).norm(dim=1)[:, None, None])
    assert moved > plain + 0.01  # a step along the gradient raises the loss
    assert torch.allclose(loss, plain + moved, atol=1e-5)
    (plain + moved).backward()  # the step's gradients are those of the sum, the moved embeddings held constant
    assert step_grads.keys() == {name for name, p in model.named_parameters() if p.requires_grad}
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.allclose(step_grads[name], param.grad, atol=1e-5), name
    model.eval()
    assert torch.allclose(trainer.compute_loss(model, inputs), plain, atol=1e-5)  # evaluation: the plain loss
    trainer.release()
    assert not table._forward_hooks  # the next stage's trainer starts from the model as it was
