"""The Gradio demo of a trained classifier: `hftransfer demo MODEL`, `space/app.py` and `--serve_demo` use it.

Predict tab (image upload or text box, top-k classes, validation examples), Results tab (metrics, confusion matrix,
curves, freeze plan, comparison) and Model card tab. Image and text models are told apart from the saved config;
the task adapter supplies the input widget and the preprocessing, so the demo preprocesses exactly as training did.

Fast by construction: the model loads once (an output folder in PyTorch, an exported folder in onnxruntime:
`inference.Predictor`), predictions run on batches Gradio gathers (`batch=True`), and each browser input is first
checked on its own (a cheap header read), so one bad upload is a clear message to its sender and never fails the batch
it would have joined. API callers reach the batch directly: their inputs are checked there (README, the demo). Gradio
is imported here only: the core works without it.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from .card import headline_rows
from .errors import InputError
from .inference import TOP_K, Predictor
from .outputs import CONFUSION_PNG, CURVES_PNG, OutputFolder
from .report import comparison_table, data_quality_section, markdown_table, plan_table, stage_rows

MAX_BATCH = 16


def results_markdown(folder: Path) -> str:
    """Metrics, stages, freeze plan and comparison of an output folder, as Markdown."""
    output = OutputFolder(folder)
    results, run, plan, comparison = output.results, output.run or {}, output.plan, output.comparison
    parts = []
    headline = headline_rows(results, run)
    if headline:
        parts.append("### Metrics (validation)\n\n" + markdown_table(headline))
    if run.get("stages"):
        parts.append("### Stages\n\n" + markdown_table(stage_rows(run["stages"])))
    if plan:
        parts.append("### Freeze plan\n\n" + plan_table(plan))
    if comparison:
        parts.append("### Strategies compared\n\n" + comparison_table(comparison))
    if output.data_quality:
        parts.append(data_quality_section(output.data_quality, heading="###"))
    return "\n".join(parts) or "No results were saved with this model."


def card_markdown(folder: Path) -> str:
    """The model card's body: YAML header dropped, relative images dropped (the Results tab shows them)."""
    path = OutputFolder(folder).card
    if not path.is_file():
        return "This model has no model card."
    text = re.sub(r"\A---\n.*?\n---\n", "", path.read_text(), flags=re.S)
    return re.sub(r"!\[[^\]]*\]\((?!https?:)[^)]*\)\n?", "", text)


def build_demo(model: str, title: str | None = None):
    import gradio as gr

    predictor = Predictor(model)
    folder = predictor.folder
    title = title or (folder.name if Path(model).exists() else model)

    def read(*values):  # one input: a value from each widget (a sentence pair's two texts)
        try:
            return predictor.task.demo_input(*values)
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False) from None

    def check(*values):
        read(*values)

    def predict(*columns):  # Gradio batches: one list per input widget, one list per output
        # The browser checked already; API callers reach this directly. One read serves the check and the
        # prediction (an image was decoded for each).
        return [predictor.predict([read(*values) for values in zip(*columns)])]

    with gr.Blocks(title=f"{title} - hftransfer") as demo:
        gr.Markdown(f"# {title}\n{len(predictor.labels)} classes: {', '.join(predictor.labels[:20])}"
                    f"{' ...' if len(predictor.labels) > 20 else ''}")
        with gr.Tab("Predict"):
            with gr.Row():
                with gr.Column():
                    widgets = predictor.task.demo_components(gr)
                    button = gr.Button("Classify", variant="primary", elem_id="predict-button")
                with gr.Column():
                    label = gr.Label(num_top_classes=TOP_K, label="Prediction", elem_id="prediction")
            examples = predictor.examples()
            if examples:
                rows = [list(value) if isinstance(value, tuple) else [value] for value in examples]  # a value a widget
                gr.Examples(rows, inputs=widgets, label="Examples from the validation data")
        with gr.Tab("Results"):
            gr.Markdown(results_markdown(folder))
            for name, caption in ((CONFUSION_PNG, "Confusion matrix"), (CURVES_PNG, "Training curves")):
                path = OutputFolder(folder).report_file(name)
                if path:
                    gr.Image(str(path), label=caption, interactive=False)
        with gr.Tab("Model card"):
            gr.Markdown(card_markdown(folder))
        # The check is queued (an unqueued event's gr.Error shows no toast in Gradio 6) but never waits on the model.
        button.click(check, widgets, None, api_name=False, concurrency_limit=None).success(
            predict, widgets, [label], batch=True, max_batch_size=MAX_BATCH, api_name="predict")
    return demo


def serve(model: str, host: str = "127.0.0.1", port: int | None = None, share: bool = False, **launch):
    if port is not None:
        check_port_free(host, port)  # before the model loads: it was Gradio's OSError traceback after
    demo = build_demo(model)
    demo.queue(default_concurrency_limit=1)  # one model, one batch at a time: requests wait and get batched
    return demo.launch(server_name=host, server_port=port, share=share, **launch)


def check_port_free(host: str, port: int) -> None:
    """A port this machine cannot serve on (another program, an earlier demo, listens there; a host it does not
    have) is an error naming it. Bound as uvicorn binds it (address reuse on), so a port left in TIME_WAIT is free."""
    address = host.strip("[]")  # Gradio takes [::1] as ::1
    family = socket.AF_INET6 if ":" in address else socket.AF_INET  # uvicorn's choice: localhost is 127.0.0.1
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address, port))
    except (OSError, ValueError) as err:  # a malformed name: a UnicodeError
        reason = getattr(err, "strerror", None) or err
        raise InputError(f"--host {host} --port {port}: cannot serve there ({reason}): another "
                         "program may listen on it (an earlier demo?); give another --port, or leave it out for the "
                         "first free one from 7860") from None
