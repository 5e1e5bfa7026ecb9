"""A trained classifier answering: one `Predictor` over an output folder (PyTorch) or an exported one (ONNX).

`hftransfer predict`, the demo, the Space and `hftransfer export`'s checks all load models here, so each serves an
output folder, an exported folder or a Hub id alike. What the model is (image or text, its labels, single- or
multi-label) comes from the saved `config.json`, which an exported folder keeps; the preprocessing is the task
adapter's, as in training. Only the engine differs: `TorchEngine` runs the saved weights, `OnnxEngine` runs
`model.onnx` in onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import hardware
from .args import DataArguments
from .outputs import EXAMPLES_FOLDER, ONNX_FILE, REPORT_DIR, OutputFolder

TOP_K = 5


def model_folder(model: str) -> Path:
    """A local folder with the model's files: the folder itself, a zoo entry, or a Hub snapshot (weights too). What
    is not there is an error naming the model (`modeling.checkpoint_path`, `modeling.checkpoint_errors`)."""
    from .modeling import checkpoint_errors, checkpoint_path

    with checkpoint_errors(model):
        local = Path(checkpoint_path(model))
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    with checkpoint_errors(f"{model} (no such folder here, so read as a Hub id)"):
        return Path(snapshot_download(model, allow_patterns=["*.json", "*.md", "*.txt", "*.safetensors", "*.model",
                                                             "*.onnx", f"{REPORT_DIR}/*", f"{EXAMPLES_FOLDER}/*"]))


def is_exported(folder: Path) -> bool:
    return (Path(folder) / ONNX_FILE).is_file()


class TorchEngine:
    """The saved weights in PyTorch, on the GPU when there is one."""

    name = "pytorch"

    def __init__(self, folder: Path, task, device: str | None = None):
        from .modeling import load_trained

        self.device = torch.device(device) if device else hardware.inference_device()
        self.model = task.prepare_model(load_trained(str(folder))).to(self.device)

    @torch.inference_mode()
    def __call__(self, inputs: dict) -> np.ndarray:
        batch = {k: v.to(self.device) for k, v in inputs.items()}
        return self.model(**batch).logits.float().cpu().numpy()


class OnnxEngine:
    """`model.onnx` in onnxruntime, on this machine's usable cores. Inputs the graph does not take (a tokenizer's
    `token_type_ids` where the model ignores them) are left out."""

    name = "onnx"

    def __init__(self, folder: Path, file: str = ONNX_FILE, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or hardware.usable_cores()
        self.session = ort.InferenceSession(str(Path(folder) / file), options,
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, inputs: dict) -> np.ndarray:
        feed = {name: inputs[name].numpy() for name in self.input_names}
        return self.session.run(["logits"], feed)[0]


class Predictor:
    """A trained classifier and its processor, loaded once: raw inputs (image paths or images, texts) -> scores."""

    def __init__(self, model: str | Path, engine: str | None = None, device: str | None = None):
        from .modeling import classifier_task, read_config

        self.folder = model_folder(str(model))
        config = read_config(str(self.folder), str(model))
        settings = (OutputFolder(self.folder).run or {}).get("settings") or {}
        self.task = classifier_task(config, str(model))().with_data(DataArguments.from_settings(settings))
        self.processor = self.task.load_processor(str(self.folder))
        self.labels = [config.id2label[i] for i in sorted(config.id2label)]
        self.multi_label = config.problem_type == "multi_label_classification"
        onnx = engine == OnnxEngine.name or (engine is None and is_exported(self.folder))
        self.engine = OnnxEngine(self.folder) if onnx else TorchEngine(self.folder, self.task, device)

    def inputs(self, values: list, fast: bool = False) -> dict:
        """Model inputs for raw inputs, preprocessed as in training (the task adapter's)."""
        return self.task.model_inputs(self.processor, values, fast=fast)

    def scores(self, inputs: dict) -> np.ndarray:
        """Class probabilities of model inputs."""
        return self.probabilities(self.engine(inputs))

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Softmax over the labels, or each label's sigmoid for a multi-label model."""
        logits = torch.from_numpy(logits)
        return (logits.sigmoid() if self.multi_label else logits.softmax(-1)).numpy()

    def predict(self, values: list) -> list[dict[str, float]]:
        """The top classes of each input, with their probabilities (the demo's answer)."""
        scores = self.scores(self.inputs(values))
        top = np.argsort(-scores, axis=-1, kind="stable")[:, :min(TOP_K, len(self.labels))]
        return [{self.labels[i]: float(row[i]) for i in ids} for row, ids in zip(scores, top)]

    def examples(self) -> list:
        folder = OutputFolder(self.folder).examples
        return self.task.load_examples(folder) if folder.is_dir() else []
