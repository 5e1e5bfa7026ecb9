"""The output folder's layout, one owner: every file and folder a run writes and the card, demo, Space, report,
comparison and resume read, by name.

    output_dir/
      model.safetensors, config.json, processor or tokenizer files   (the model: `from_pretrained` loads it)
      all_results.json, train_results.json, eval_results.json        (`Trainer.save_metrics`' convention)
      hftransfer_run.json   settings, stages with their logs, data report, labels
      freeze_plan.json      the last stage's plan (`hftransfer freeze-report --plan` reads it)
      report/report.md, report/confusion_matrix.png, report/training_curves.png
      examples/             a few validation inputs for the demo
      lora_adapter/         the adapter and its head, when a stage used LoRA
      comparison.json       `hftransfer compare`'s table
      README.md             the model card
      stage-NAME/           checkpoints of each stage (killed runs resume from them); .saving/ while publishing
"""

ALL_RESULTS = "all_results.json"
RUN_RECORD = "hftransfer_run.json"
PLAN_FILE = "freeze_plan.json"
REPORT_DIR = "report"
REPORT_MD = "report.md"
PER_CLASS_MD = "per_class.md"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curves.png"
EXAMPLES_FOLDER = "examples"
ADAPTER_FOLDER = "lora_adapter"
COMPARISON_FILE = "comparison.json"
CARD = "README.md"
STAGING = ".saving"


def results_file(split: str) -> str:
    """`train`, `eval` or `all`: the `Trainer.save_metrics` file name."""
    return f"{split}_results.json"
