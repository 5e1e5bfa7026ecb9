"""Task adapters: the only place where images and text differ.

An adapter knows its `transformers` auto class and processor, how to read one input file, which rows are unusable,
how to turn raw rows into model inputs, and its embedded sample. Everything else lives in the shared core.
"""

from __future__ import annotations

import io
import json
import logging
import random
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict, Image as ImageFeature, Value, load_dataset

from .anatomy import ModelError, architecture, input_embeddings, is_decoder_classifier
from .data import DataError, DataReport, column_values
from .hardware import thread_map
from .outputs import EXAMPLES_FILE
from .pixels import FastPixels, size_entries, to_rgb

logger = logging.getLogger(__name__)


class TaskAdapter:
    """Everything that differs between images and text; the rest of hftransfer asks the adapter."""

    name: str
    default_model: str
    embedded_name: str
    auto_model_class: Any
    column_setting: str  # the DataArguments field that names the input column(s)
    pipeline_tag: str  # the Hub's task, for the card and the pipeline
    noun: str  # "an image" / "a text": how the card and errors say it
    usage_example: str  # the arguments of a pipeline call in the card's snippet
    pairs = False  # each input two texts (a sentence-pair text model)

    def __init__(self, data_args=None):
        self.data_args = data_args

    def with_data(self, data_args) -> TaskAdapter:
        """The same task over resolved data arguments (the columns `choices` picked)."""
        return type(self)(data_args)

    # data -----------------------------------------------------------------
    def input_columns(self, args) -> list[str]:
        raise NotImplementedError

    def check_file(self, path: Path) -> str | None:
        """Why the file at `path` cannot be read into a row, or None. Content checks that apply to every source
        belong in `drop_unusable`, which sees folder rows too."""
        return None

    def dataset_from_files(self, paths: list[str], labels: list[str]) -> Dataset:
        raise NotImplementedError

    def drop_unusable(self, dataset: Dataset, split: str, report: DataReport) -> Dataset:
        return dataset

    def padding_probe(self, processor, train: Dataset):
        """(an input alone, it in a batch where padding is added to it) as model inputs, for
        `modeling.check_padding`; None where inputs are never padded (images)."""
        return None

    def is_input_feature(self, feature) -> bool:
        """Whether a column of this `datasets` feature type could hold this task's inputs."""
        raise NotImplementedError

    def raw_inputs(self, dataset: Dataset) -> list:
        """Each row's input as stored (undecoded images, texts): what the data-quality pass compares by content."""
        raise NotImplementedError

    def inputs_of(self, dataset: Dataset) -> list:
        """Each row's input as `read_input` and `model_inputs` take it: what predict, the examples and the export's
        check feed the model. An input read from several widgets or columns (a sentence pair) is a tuple."""
        return self.raw_inputs(dataset)

    def item(self, raw, index: int):
        """How `data_quality.json` names a row: the file path for files found on disk, the text for texts, else the
        row index."""
        return index

    def thumbnail(self, raw, path: Path) -> bool:
        """Write a small picture of the input for the report; False where a text says it better."""
        return False

    def load_embedded(self) -> DatasetDict:
        folder = resources.files("hftransfer") / "samples" / self.embedded_name
        files = {split: str(folder / f"{split}.parquet") for split in ("train", "validation")}
        return load_dataset("parquet", data_files=files)

    # model ----------------------------------------------------------------
    def load_processor(self, path: str, **kwargs):
        raise NotImplementedError

    def prepare_model(self, model):
        """Hardware-friendly layout of the loaded model (no change by default)."""
        return model

    def adapt_processor(self, processor, model, splits: DatasetDict, choices):
        """Settings chosen from the data (image size, sequence length), recorded in `choices`; returns the
        processor to save."""
        return processor

    def transform(self, processor, train: bool):
        """A `set_transform` function: raw rows -> model inputs, applied lazily per batch."""
        raise NotImplementedError

    def lengths(self, dataset: Dataset, processor) -> list[int] | None:
        """Per-example input lengths where inputs vary in length, so batches can group similar lengths."""
        return None

    def collator(self, processor):
        return None  # the Trainer's default collator stacks tensors

    # demo -----------------------------------------------------------------
    def demo_components(self, gr) -> list:
        """The Gradio input widgets of one input (gradio is passed in: the core does not import it)."""
        raise NotImplementedError

    def demo_input(self, *values):
        """One demo input (a value from each widget) read once, ready for `model_inputs`; ValueError saying to the
        user why it cannot be classified."""
        raise NotImplementedError

    def read_input(self, value):
        """One input to predict on (a file path or an image; a text), ready for `model_inputs`; ValueError saying
        why it cannot be read."""
        raise NotImplementedError

    def model_inputs(self, processor, values: list, fast: bool = False) -> dict:
        """Inputs (file paths, images or texts) -> model inputs, preprocessed exactly as in training. `fast`: by the
        bit-identical fast path where there is one (batch prediction)."""
        raise NotImplementedError

    def save_examples(self, rows: list, folder: Path) -> None:
        """Write a few validation inputs (`rows`: (input, label name)) where the demo finds them."""
        raise NotImplementedError

    def load_examples(self, folder: Path) -> list:
        """The saved examples' inputs, as `inputs_of` gives them."""
        raise NotImplementedError


# ---------------------------------------------------------------- images

def _open_image(value) -> "PIL.Image.Image":
    """The image as stored (its size read; `_open_rgb` for its pixels)."""
    from PIL import Image, ImageOps

    if isinstance(value, dict):  # a datasets Image() cell that was not decoded
        value = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
    image = value if hasattr(value, "mode") else Image.open(value)
    image.load()
    return ImageOps.exif_transpose(image)


def _open_rgb(value):
    return to_rgb(_open_image(value))


def _read_image(value):
    """The image decoded in RGB; ValueError saying why it cannot be."""
    from PIL import Image, UnidentifiedImageError

    try:
        return _open_rgb(value)
    except UnidentifiedImageError:
        reason = "not an image"
    except FileNotFoundError:
        reason = "file not found"
    except Image.DecompressionBombError:
        reason = f"too large (over {2 * Image.MAX_IMAGE_PIXELS:,} pixels: a possible decompression bomb)"
    except (OSError, ValueError, SyntaxError) as err:  # truncated data, bad headers
        reason = f"corrupt image ({type(err).__name__})"
    raise ValueError(reason)


def as_image_column(dataset: Dataset, column: str, table: str | None) -> Dataset:
    """A table's column of file paths or encoded image bytes as an Image column, which training decodes (bytes
    reached PIL as a file name). A relative path is read from the table's folder, as the Hub's imagefolder reads its
    metadata files, else from the working directory. Training's and `predict`'s."""
    feature = dataset.features[column]
    if isinstance(feature, ImageFeature):
        return dataset
    if isinstance(feature, dict) and set(feature) <= {"bytes", "path"}:  # Image's own layout, its type name lost
        return dataset.cast_column(column, ImageFeature())                # (pandas, pyarrow and polars write it so)
    if not isinstance(feature, Value) or feature.dtype not in ("string", "large_string", "binary", "large_binary"):
        raise DataError(f"{table or 'the data'}: column '{column}' holds {feature}, not images, image files' paths "
                        "or their bytes")
    if table and feature.dtype in ("string", "large_string"):
        folder = Path(table).parent
        dataset = dataset.map(lambda batch: {column: [_locate(p, folder) for p in batch[column]]}, batched=True,
                              desc="Locating image files", load_from_cache_file=False)  # files move; the cache not
    return dataset.cast_column(column, ImageFeature())


def _locate(path: str | None, folder: Path) -> str | None:
    """A table's image path: relative ones from the table's folder first, then the working directory (shown as
    looked for in the first when in neither)."""
    if not path or Path(path).is_absolute():
        return path
    beside = folder / path
    return path if not beside.exists() and Path(path).exists() else str(beside)


def _image_problem(value) -> str | None:
    if not value:
        return "missing image"
    try:
        _read_image(value)
    except ValueError as err:
        return str(err)
    return None


class ImageTask(TaskAdapter):
    name = "image"
    default_model = "zoo:mobilenet_v2"
    embedded_name = "fashion_mnist"
    column_setting = "image_column_name"
    pipeline_tag = "image-classification"
    noun = "an image"
    usage_example = '"photo.jpg"'
    min_image_size = 96
    upscale = 4  # small images (28 px) are shown to the network at 4x, not 8x (224 px): measured, see README

    def __init__(self, data_args=None):
        super().__init__(data_args)
        self._fast_pixels = (None, None)  # (processor, its FastPixels or None)

    @property
    def column(self) -> str:
        return self.data_args.image_column_name if self.data_args else "image"

    @property
    def auto_model_class(self):
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification

    def input_columns(self, args) -> list[str]:
        return [args.image_column_name]

    def is_input_feature(self, feature) -> bool:
        return isinstance(feature, ImageFeature)

    def dataset_from_files(self, paths, labels) -> Dataset:
        return Dataset.from_dict({self.column: paths, "label": labels}).cast_column(self.column, ImageFeature())

    def raw_inputs(self, dataset):
        return dataset.cast_column(self.column, ImageFeature(decode=False))[self.column]

    def item(self, raw, index):
        path = (raw or {}).get("path")
        return path if path and Path(path).is_file() else index

    def thumbnail(self, raw, path):
        image = _open_rgb(raw)
        image.thumbnail((64, 64))
        image.save(path)
        return True

    def drop_unusable(self, dataset, split, report):
        dataset = as_image_column(dataset, self.column, report.tables.get(split))
        cells = dataset.cast_column(self.column, ImageFeature(decode=False))[self.column]
        good = []
        for index, (cell, problem) in enumerate(thread_map(lambda cell: (cell, _image_problem(cell)), cells)):
            if problem:
                report.skip(split, problem, (cell or {}).get("path") or f"row {index}")
            else:
                good.append(index)
        return dataset if len(good) == len(dataset) else dataset.select(good)

    def load_processor(self, path, **kwargs):
        return _load_image_processor(path, kwargs)

    def prepare_model(self, model):
        """Channels-last weights: oneDNN's convolutions run 1.5x faster on them on a CPU (measured, fastpath.py).
        Not where a layer's backward pass crashes the process on a channels-last input (`_crashes_channels_last`)."""
        modules = list(model.modules())
        if any(isinstance(m, torch.nn.Conv2d) for m in modules) and not any(map(_crashes_channels_last, modules)):
            model = model.to(memory_format=torch.channels_last)
        return model

    def adapt_processor(self, processor, model, splits, choices):
        """Show small images at `upscale` times their size instead of the checkpoint's full resolution.

        Only for convolutional models that accept another input size; a 28 px image blown up to 224 px costs 4x
        the compute of 112 px for no accuracy (measured on Fashion-MNIST, see README). Models with attention keep
        their size unless `--image_size` names one: their position tables are tied to it (a tiny BEiT at 96 px gave
        logits that changed from call to call, then NaN gradients). The size used is recorded in `choices`.
        """
        asked = self.data_args.image_size if self.data_args else None
        size, chosen = asked, asked is None
        if getattr(processor, "do_resize", None) is False:  # a crop alone would pad small images, not enlarge them
            processor.do_resize = True
            logger.warning("%s was saved not to resize (do_resize false): it resizes now, to the size below",
                           type(processor).__name__)
        native = _processor_size(processor)
        config_size = _config_size_instead(model, native)
        if config_size and _set_processor_size(processor, config_size):
            logger.warning("%s takes %d px inputs (its config's image_size), not the %d px its %s makes: resizing to "
                           "%d px", type(model).__name__, config_size, native, type(processor).__name__, config_size)
            native = config_size
        reason = f"the checkpoint's {native} px"
        if size is None:
            sides = sorted(min(_open_image(v).size) for v in splits["train"].select(
                range(min(64, len(splits["train"]))))[self.column])
            median = sides[len(sides) // 2]
            size = min(native, max(self.min_image_size, -(-median * self.upscale // 16) * 16))
            reason = f"from the images' size (median side {median} px, x{self.upscale}); checkpoint {native} px"
        if size != native:
            if chosen and architecture(model) != "conv":
                size, reason = native, f"{type(model).__name__} has attention layers: the checkpoint's size"
                logger.info("%s has attention layers: keeping its %d px inputs (--image_size changes them)",
                            type(model).__name__, native)
            elif not _accepts_size(model, size):
                size, reason = native, f"{type(model).__name__} needs {native} px inputs"
            elif not _set_processor_size(processor, size):
                size, reason = native, f"{type(processor).__name__} gives no {size} px output"
            else:
                logger.info("Input size %d px (checkpoint: %d px): %s", size, native,
                            reason if chosen else "--image_size")
        if size == native and not _gives_square(processor, size) and _set_processor_size(processor, size):
            logger.warning("%s keeps each image's proportions (no crop), so images of other shapes could not be "
                           "batched: set to %d x %d px", type(processor).__name__, size, size)
        if chosen:
            choices.add("image_size", size, reason)
        elif size != asked:  # the flag could not be honoured: say so, record the size used
            logger.warning("--image_size %d not used: %s; using %d px", asked, reason, size)
            choices.add("image_size", size, f"--image_size {asked} not used: {reason}")
        return processor

    def transform(self, processor, train):
        column = self.column
        augment = train and bool(self.data_args and self.data_args.augment)
        size = _processor_size(processor)

        def apply(batch):
            images = [_open_rgb(v) for v in batch[column]]
            if augment:
                images = [_augment(image, size) for image in images]
            inputs = {"pixel_values": self.pixel_values(processor, images)}
            if "label" in batch:
                inputs["labels"] = batch["label"]  # the collator makes tensors; multi-label lists vary in length
            return inputs

        return apply


    def demo_components(self, gr):
        component = gr.Image(type="filepath", label="Image", elem_id="image-input", height=320)
        read = component.preprocess

        def preprocess(payload):
            # Gradio opens every upload with PIL before the app sees it; its own failure reads "Could not preprocess
            # input component at index 0"; a `gr.Error` reaches the user as it is.
            try:
                return read(payload)
            except Exception as err:
                name = getattr(payload, "orig_name", None) or "the upload"
                raise gr.Error(f"Not an image that can be read: {name} ({type(err).__name__})",
                               print_exception=False) from err

        component.preprocess = preprocess
        return [component]

    def demo_input(self, value):
        from PIL import Image

        if not value:
            raise ValueError("No image: upload one, or pick an example")
        try:
            with Image.open(value) as image:  # the header only: size is known before anything is decoded
                width, height = image.size
        except Image.DecompressionBombError:
            raise ValueError(f"Image too large (limit {DEMO_MAX_PIXELS // 10**6} megapixels)") from None
        except (OSError, ValueError, SyntaxError):
            raise ValueError(f"Not an image that can be read: {Path(value).name}") from None
        if width * height > DEMO_MAX_PIXELS:
            raise ValueError(f"Image too large: {width} x {height} pixels (limit {DEMO_MAX_PIXELS // 10**6} "
                             "megapixels)")
        try:
            return _read_image(value)  # decoded here only: the prediction takes these pixels
        except ValueError as err:
            raise ValueError(f"{Path(value).name}: {err}") from None

    def read_input(self, value):
        return _read_image(value)

    def model_inputs(self, processor, values, fast=False):
        images = [v if getattr(v, "mode", None) == "RGB" else _open_rgb(v) for v in values]
        if fast:
            return {"pixel_values": self.pixel_values(processor, images)}
        # The demo uses the processor itself, not `pixel_values`' fast path (which gives the same values): a few
        # images per request gain little from it, and a server's memory is best kept to one well-trodden path (the
        # busy-demo memory test failed twice with the fast path here, though it also fails now and then without it).
        return {"pixel_values": processor(images, return_tensors="pt")["pixel_values"]}

    def pixel_values(self, processor, images) -> torch.Tensor:
        """The processor's pixel values for RGB images, through its bit-identical fast path where it has one."""
        if self._fast_pixels[0] is not processor:
            self._fast_pixels = (processor, FastPixels.for_processor(processor))
        fast = self._fast_pixels[1]
        pixels = fast(images) if fast is not None else None
        return pixels if pixels is not None else processor(images, return_tensors="pt")["pixel_values"]

    def save_examples(self, rows, folder):
        folder.mkdir(parents=True, exist_ok=True)
        for index, (value, label) in enumerate(rows):
            safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in label)
            _open_rgb(value).save(folder / f"{index:02d}_{safe}.png")

    def load_examples(self, folder):
        return [str(p) for p in sorted(folder.glob("*.png"))]


LENGTH_BLOCK = 10_000  # texts a length count tokenizes at once
DEMO_MAX_PIXELS = 40_000_000  # a 40 MP photo is fine; beyond, decoding alone would stall the demo for everyone


def _augment(image, size: int):
    """Random resized crop (scale 0.6-1) and horizontal flip, in PIL: torchvision is not needed."""
    from PIL import Image

    width, height = image.size
    scale = random.uniform(0.6, 1.0)
    w, h = max(1, int(width * scale ** 0.5)), max(1, int(height * scale ** 0.5))
    left, top = random.randint(0, width - w), random.randint(0, height - h)
    image = image.crop((left, top, left + w, top + h))
    if random.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def _load_image_processor(path: str, hub_kwargs: dict):
    """The checkpoint's image processor, older files included (`_renamed_legacy_processor`); none is an error."""
    from transformers import AutoImageProcessor

    backend = None if _has_torchvision() else "pil"
    try:
        return AutoImageProcessor.from_pretrained(path, backend=backend, **hub_kwargs)
    except ValueError:
        settings = _renamed_legacy_processor(path, hub_kwargs)
        if settings is None:
            raise
    except OSError as error:
        if Path(path).is_dir():  # a model saved or pushed without its processor: nothing says how to scale pixels
            raise ModelError(f"{path}: no image processor (preprocessor_config.json) beside the model. Save the one "
                             "it was trained with there: AutoImageProcessor.from_pretrained(<the checkpoint it was "
                             "fine-tuned from>).save_pretrained(<this folder>)") from error
        raise
    return AutoImageProcessor.from_pretrained(path, backend=backend, processor_config=settings, **hub_kwargs)


def _renamed_legacy_processor(path: str, hub_kwargs: dict) -> dict | None:
    """The processor settings with a legacy class name brought up to date, None if they name none. Processors saved
    through a `*FeatureExtractor` alias (transformers 4.2x; many fine-tuned checkpoints on the Hub) record that
    alias as `image_processor_type`; transformers 5 dropped the aliases, and its `AutoImageProcessor` then fails
    ("Unrecognized image processor") although the model type names the class. It maps the older
    `feature_extractor_type` key by the same renaming."""
    from transformers.image_processing_utils import ImageProcessingMixin

    settings, _ = ImageProcessingMixin.get_image_processor_dict(
        path, revision=hub_kwargs.get("revision"), cache_dir=hub_kwargs.get("cache_dir"))
    legacy = str(settings.get("image_processor_type") or "")
    if not legacy.endswith("FeatureExtractor"):
        return None
    current = legacy.replace("FeatureExtractor", "ImageProcessor")
    logger.info("Image processor: the checkpoint names %s, a class transformers 5 no longer has; loaded as %s, the "
                "name it now has (saved under that name)", legacy, current)
    return {**settings, "image_processor_type": current}


def _has_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # not installed, or a build that does not match torch
        return False
    return True


def _processor_size(processor) -> int:
    """The side of the square the processor outputs: its crop where it crops, else its resize; for timm's processor,
    its data config's input size (224, 299 for Inception-v3)."""
    data_config = getattr(processor, "data_config", None)
    if isinstance(data_config, dict) and data_config.get("input_size"):
        return int(data_config["input_size"][-1])
    crops = getattr(processor, "do_center_crop", True)
    for attr in ("crop_size", "size") if crops else ("size",):
        value = getattr(processor, attr, None)
        dims = size_entries(value) if value is not None and not isinstance(value, int) else {}
        for key in ("height", "shortest_edge"):
            if dims.get(key):
                return int(dims[key])
        if isinstance(value, int):
            return value
    return 224


# Ways to make a processor output `size` x `size`, tried in order: the resize straight to the square (small images have
# no border worth cropping away), then the shortest edge with a square crop, for processors that only take
# `shortest_edge` (ConvNeXt's, as microsoft/resnet-50 ships it; crop_pct 1 so the resize is the crop's side).
def _size_settings(processor, size: int) -> list[dict]:
    square = {"height": size, "width": size}
    straight = {"size": square, "crop_size": square, "do_center_crop": False}
    edge = {"size": {"shortest_edge": size}, "crop_size": square, "do_center_crop": True, "crop_pct": 1.0}
    return [{k: v for k, v in settings.items() if k == "size" or hasattr(processor, k)}
            for settings in (straight, edge)]


def _set_processor_size(processor, size: int) -> bool:
    """Make `processor` output `size` x `size` pixels, checked on a probe image; False (settings untouched) where no
    setting does."""
    import copy

    for settings in _size_settings(processor, size):
        saved = {k: copy.deepcopy(getattr(processor, k, None)) for k in settings}
        for key, value in settings.items():
            setattr(processor, key, value)
        if _gives_square(processor, size):
            return True
        for key, value in saved.items():
            setattr(processor, key, value)
    return False


def _gives_square(processor, size: int) -> bool:
    """Whether `processor` turns an oblong probe image into `size` x `size` pixels."""
    from PIL import Image

    try:
        shape = processor(images=[Image.new("RGB", (size + 37, size + 11))], return_tensors="pt")["pixel_values"].shape
    except Exception:  # noqa: BLE001 - settings this processor refuses
        return False
    return tuple(shape[-2:]) == (size, size)


def _config_size_instead(model, native: int) -> int | None:
    """The config's square `image_size` where the model refuses the processor's size and takes that one (a processor
    saved with its defaults beside a ViT of another size); None where the processor's size runs (Dinov2's config
    says 518, its processors 224, and it interpolates). CLIP's and SigLIP's classifiers keep it in `vision_config`."""
    wanted = getattr(getattr(model.config, "vision_config", None) or model.config, "image_size", None)
    wanted = wanted[-1] if isinstance(wanted, (list, tuple)) else wanted
    if not isinstance(wanted, int) or wanted == native or _accepts_size(model, native):
        return None
    return wanted if _accepts_size(model, wanted) else None  # else the model's own error names both sizes


def _accepts_size(model, size: int) -> bool:
    """Whether `model` runs on `size` px inputs, tried on a weightless copy of it (meta tensors: shapes only). The
    model itself must not run: Swin shrinks its attention windows for good when an input is small for them."""
    channels = getattr(model.config, "num_channels", 3)
    try:
        with torch.device("meta"):
            probe = type(model)(model.config).eval()
            probe(pixel_values=torch.zeros(2, channels, size, size))
        return True
    except Exception:
        return False


# ---------------------------------------------------------------- text

class TextTask(TaskAdapter):
    name = "text"
    default_model = "zoo:all-MiniLM-L6-v2"
    embedded_name = "rotten_tomatoes"
    column_setting = "text_column_names"
    pipeline_tag = "text-classification"
    noun = "a text"
    max_length_cap = 512  # longer inputs cost quadratic attention for little gain in classification

    @property
    def columns(self) -> list[str]:
        return self.input_columns(self.data_args)

    @property
    def pairs(self) -> bool:
        """Sentence pairs (`--text_column_names premise,hypothesis`): an input is two texts, one of each column."""
        return len(self.columns) == 2

    @property
    def usage_example(self) -> str:  # the pipeline cuts no text unless asked
        if self.pairs:
            return '{"text": "a man plays a guitar", "text_pair": "someone makes music"}, truncation=True'
        return '"a wonderful, moving film", truncation=True'

    def input_columns(self, args) -> list[str]:
        names = args.text_column_names if args else "text"
        columns = [c.strip() for c in names.split(",")]
        if not 1 <= len(columns) <= 2 or not all(columns):  # ",premise" trained on one column, in silence
            raise DataError(f"--text_column_names takes one column, or two for sentence pairs, not '{names}'")
        return columns

    @property
    def auto_model_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def is_input_feature(self, feature) -> bool:
        return isinstance(feature, Value) and feature.dtype in ("string", "large_string")

    def check_file(self, path: Path) -> str | None:
        if path.suffix.lower() != ".txt":  # one text a .txt file, as `predict` reads folders (notes.md is no example)
            return "not a .txt file"
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            return "not UTF-8 text"
        return None if not _is_blank(text) else "empty text"

    def dataset_from_files(self, paths, labels) -> Dataset:
        texts = [Path(p).read_text(encoding="utf-8").strip() for p in paths]
        return Dataset.from_dict({self.columns[0]: texts, "label": labels})

    def _texts(self, dataset) -> list[list]:
        """Each input column whole, as stored (a column read row by row cost seconds per 100,000 texts)."""
        return [column_values(dataset, c) for c in self.columns]

    def raw_inputs(self, dataset):
        return [" / ".join(parts) for parts in zip(*self._texts(dataset))]

    def inputs_of(self, dataset):
        return list(zip(*self._texts(dataset))) if self.pairs else self.raw_inputs(dataset)

    def item(self, raw, index):
        return raw

    def drop_unusable(self, dataset, split, report):
        good = []
        for index, cells in enumerate(zip(*self._texts(dataset))):  # the dataset's rows: 3 s for 200,000 texts
            problem = next(filter(None, map(_text_problem, cells, self.columns)), None)
            if problem:
                report.skip(split, problem, f"row {index}")
            else:
                good.append(index)
        return dataset if len(good) == len(dataset) else dataset.select(good)

    def load_processor(self, path, **kwargs):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        _check_has_vocabulary(tokenizer)
        return tokenizer

    def adapt_processor(self, tokenizer, model, splits, choices):
        """The token limit: --max_seq_length, else the model's, capped at 512 and at the position table (XLNet's
        config, which has none, says -1). A tokenizer with ids past the model's vocabulary, or one that knows
        almost none of the training texts' words, is an error."""
        _check_vocabulary(tokenizer, model)
        train = splits.get("train")
        _check_known_words(tokenizer, self.raw_inputs(_first_rows(train)) if train else [])
        limits = [tokenizer.model_max_length, _position_limit(model), self.max_length_cap]
        natural = min(int(v) for v in limits if v and v > 0)
        wanted = self.data_args.max_seq_length if self.data_args and self.data_args.max_seq_length else None
        special = tokenizer.num_special_tokens_to_add(pair=self.pairs)
        least = special + (2 if self.pairs else 1)
        if wanted is not None and wanted < least:  # every text would be its special tokens alone, one answer for all
            raise ModelError(f"--max_seq_length {wanted}: {type(tokenizer).__name__} adds {special} special tokens to "
                             f"each input; at least {least} leaves room for a word of each text")
        if wanted is None:
            choices.add("max_seq_length", natural, f"the model's limit, at most {self.max_length_cap}; padded per "
                        "batch")
        elif wanted > natural:
            logger.warning("--max_seq_length %d is more than %s takes; using %d", wanted, type(model).__name__,
                           natural)
        tokenizer.model_max_length = min(wanted or natural, natural)
        logger.info("Texts are truncated to %d tokens and padded per batch", tokenizer.model_max_length)
        _give_pad_token(tokenizer, model)
        if self.pairs:
            _separate_pairs(tokenizer, choices)
        return tokenizer

    def padding_probe(self, tokenizer, train):
        """The shortest of the first training texts (`_first_rows`), cut to a quarter of the token limit (so that,
        doubled, it still fits and is longer), alone and in a batch beside itself twice over, where it is padded."""
        shortest = min(self.inputs_of(_first_rows(train)), key=text_length)
        cut = tokenizer.model_max_length // 4
        text = tuple(part[:cut] for part in shortest) if self.pairs else shortest[:cut]
        longer = tuple(f"{part} {part}" for part in text) if self.pairs else f"{text} {text}"
        return self.model_inputs(tokenizer, [text]), self.model_inputs(tokenizer, [text, longer])

    def transform(self, tokenizer, train):
        columns = self.columns

        def apply(batch):
            texts = [batch[c] for c in columns]
            inputs = dict(tokenizer(*texts, truncation=True, max_length=tokenizer.model_max_length))
            if "label" in batch:
                inputs["labels"] = batch["label"]
            return inputs

        return apply

    def lengths(self, dataset, tokenizer):
        """Counted a block of texts at a time: the encodings of 200,000 texts at once held 1.5 GB to count tokens."""
        texts = self._texts(dataset)
        counts = []
        for start in range(0, len(texts[0]), LENGTH_BLOCK):
            block = [column[start:start + LENGTH_BLOCK] for column in texts]
            encoded = tokenizer(*block, truncation=True, max_length=tokenizer.model_max_length,
                                return_attention_mask=False, return_token_type_ids=False)
            counts += [len(ids) for ids in encoded["input_ids"]]
        return counts

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)  # dynamic padding, never to the maximum

    def demo_components(self, gr):
        if self.pairs:
            return [gr.Textbox(label=column, lines=3, elem_id=f"text-input-{i}", placeholder=f"Type the {column}")
                    for i, column in enumerate(self.columns)]
        return [gr.Textbox(label="Text", lines=4, elem_id="text-input", placeholder="Type a text to classify")]

    def demo_input(self, *values):
        empty = [c for c, v in zip(self.columns, values) if not isinstance(v, str) or _is_blank(v)]
        if empty:
            raise ValueError(f"Empty {empty[0]}: type both texts" if self.pairs else
                             "Empty text: type something to classify")
        return tuple(values) if self.pairs else values[0]

    def read_input(self, value):
        """A text, or for a pair model a (first, second) pair of texts."""
        if self.pairs and not _is_pair(value):
            raise ValueError(f"not a pair of texts ({', '.join(self.columns)})")
        for column, text in zip(self.columns, value if self.pairs else [value]):
            if not isinstance(text, str) or _is_blank(text):
                problem = "empty text" if isinstance(text, str) or text is None else \
                    f"not a text ({type(text).__name__})"
                raise ValueError(f"{problem} in '{column}'" if self.pairs else problem)
        return tuple(value) if self.pairs else value

    def model_inputs(self, tokenizer, values, fast=False):
        if self.pairs and not all(map(_is_pair, values)):
            raise ValueError(f"the model reads sentence pairs ({', '.join(self.columns)}): give each input as a "
                             "(first, second) pair of texts")
        if not self.pairs and not all(isinstance(v, str) for v in values):  # a tuple would be read as a pair
            raise ValueError("the model reads one text an input: give each input as a string")
        texts = [list(column) for column in zip(*values)] if self.pairs else [values]  # as `transform` reads them
        return dict(tokenizer(*texts, truncation=True, max_length=tokenizer.model_max_length, padding=True,
                              return_tensors="pt"))

    def save_examples(self, rows, folder):
        """`text` (and `text_pair` for a pair, as a pipeline takes a pair) and the label."""
        folder.mkdir(parents=True, exist_ok=True)
        examples = [{**({"text": text[0], "text_pair": text[1]} if isinstance(text, tuple) else {"text": text}),
                     "label": label} for text, label in rows]
        (folder / EXAMPLES_FILE).write_text(json.dumps(examples, indent=2, ensure_ascii=False) + "\n")

    def load_examples(self, folder):
        path = folder / EXAMPLES_FILE
        rows = json.loads(path.read_text()) if path.is_file() else []
        if self.pairs:  # examples written before pairs were kept whole held the two texts joined: not a pair
            return [(row["text"], row["text_pair"]) for row in rows if "text_pair" in row]
        return [row["text"] for row in rows]


def _is_pair(value) -> bool:
    """A sentence pair's input: two values, one a column (whether each is a usable text is checked after)."""
    return isinstance(value, (tuple, list)) and len(value) == 2


def _position_limit(model) -> int | None:
    """The longest input the position table holds: `max_position_embeddings`, less the offset of tables that number
    positions after the padding index (RoBERTa, XLM-R, MPNet, whose `create_position_ids_from_input_ids` starts at
    padding_idx + 1: 514 rows hold 512 tokens; a table of 512 holds 510)."""
    for name, module in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(module, torch.nn.Embedding) \
                and module.padding_idx is not None:
            return module.num_embeddings - module.padding_idx - 1
    return getattr(model.config, "max_position_embeddings", None)


SAMPLED_ROWS = 256  # the training rows the set-up's text checks read: enough to see the data, in no time


def _first_rows(train: Dataset) -> Dataset:
    return train.select(range(min(SAMPLED_ROWS, len(train))))


def text_length(value) -> int:
    """How long an input's text is (a sentence pair's two together); 0 for other inputs."""
    texts = value if isinstance(value, (tuple, list)) else [value]
    return sum(len(text) for text in texts if isinstance(text, str))


def _check_vocabulary(tokenizer, model) -> None:
    """The tokenizer's ids must index the model's embedding table: past it, the first batch that holds such a token
    fails with an IndexError that names neither (a tokenizer saved beside a model of another vocabulary). Special
    tokens that encoding never adds may lie past it (BART-large-CNN's table ends before its `<mask>`): a warning."""
    table = input_embeddings(model)
    if not isinstance(table, torch.nn.Embedding):
        return
    past = {token: index for token, index in tokenizer.get_vocab().items() if index >= table.num_embeddings}
    added = {getattr(tokenizer, f"{kind}_token_id", None) for kind in ("pad", "cls", "sep", "bos", "eos", "unk")}
    unused = set(tokenizer.all_special_ids) - added
    needed = sorted((index, token) for token, index in past.items() if index not in unused)
    if needed:
        raise ModelError(f"{len(needed):,} of the tokenizer's ids (up to {needed[-1][0]:,}: "
                         f"{', '.join(repr(token) for _, token in needed[-3:])}) lie past {type(model).__name__}'s "
                         f"embedding table of {table.num_embeddings:,} rows. Save the tokenizer the model was trained "
                         "with beside it (or resize the model's embeddings to it)")
    if past:
        logger.warning("Special tokens %s lie past %s's embedding table (%d rows); texts that spell them out would "
                       "fail", ", ".join(map(repr, past)), type(model).__name__, table.num_embeddings)


# Shares of the training texts' tokens that are the tokenizer's unknown token: past the first the run stops, past the
# second it warns (the words it loses are the ones the model cannot read).
UNKNOWN_SHARE_ERROR = 0.5
UNKNOWN_SHARE_WARNING = 0.05


# Characters that show nothing and that str.strip() keeps: a text of them alone tokenizes to nothing.
INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\u180e\u3164\ufeff\u00ad"))


def _is_blank(text: str) -> bool:
    """No visible character: whitespace, zero-width spaces and joiners, a byte-order mark, soft hyphens."""
    return not text.translate(INVISIBLE).strip()


def _text_problem(value, column: str) -> str | None:
    """Why a table cell is no text to train on (a column of numbers or lists read as "empty text" before)."""
    if value is None or isinstance(value, str) and _is_blank(value):
        return f"empty text in '{column}'"
    return None if isinstance(value, str) else f"not a text in '{column}' ({type(value).__name__})"


MISSING_TOKENIZER = ("A checkpoint without its tokenizer files (tokenizer.json, vocab.txt, spm.model...) loads an "
                     "empty one: save the tokenizer the model was trained with beside it")


def _check_has_vocabulary(tokenizer) -> None:
    """A checkpoint that ships no tokenizer files (a model pushed without its tokenizer) still loads one: transformers
    builds its family's tokenizer with the special tokens alone, every word becomes the unknown token (or nothing),
    and a run would train on nothing, a trained model give every text the same answer, and neither say so."""
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise ModelError(f"The tokenizer of {tokenizer.name_or_path} has no tokens but its {len(tokenizer)} special "
                         f"ones. {MISSING_TOKENIZER}")


def _check_known_words(tokenizer, texts: list[str]) -> None:
    """A tokenizer of another vocabulary (another language's, a tokenizer saved with the wrong model) reads the
    training texts as unknown tokens, or as no tokens at all. Measured on the training texts themselves."""
    if not texts:
        return
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    total = sum(map(len, ids))
    where = f"The tokenizer of {tokenizer.name_or_path} ({len(tokenizer):,} tokens)"
    if total == 0:  # a byte-level or BPE tokenizer drops what it cannot read instead of marking it unknown
        raise ModelError(f"{where} turns the training texts into no tokens at all. {MISSING_TOKENIZER}")
    unknown = tokenizer.unk_token_id
    if unknown is None:  # byte-level tokenizers know every string
        return
    share = sum(row.count(unknown) for row in ids) / total
    if share > UNKNOWN_SHARE_ERROR:
        raise ModelError(f"{where} reads {share:.0%} of the training texts' tokens as {tokenizer.unk_token}: it knows "
                         f"almost none of their words. {MISSING_TOKENIZER}")
    if share > UNKNOWN_SHARE_WARNING:
        logger.warning("%s reads %.0f%% of the training texts' tokens as %s: the model cannot see those words",
                       where, 100 * share, tokenizer.unk_token)
    unreadable = [text for text, row in zip(texts, ids) if row and all(token == unknown for token in row)]
    if unreadable:  # a few emoji-only texts are too few for the share above, and each trains as the unknown token
        logger.warning("%d training text(s) are nothing but %s to %s (emoji or a script it lacks: %s): each trains as "
                       "that token alone", len(unreadable), tokenizer.unk_token, tokenizer.name_or_path,
                       ", ".join(repr(text[:30]) for text in unreadable[:3]))


def _give_pad_token(tokenizer, model) -> None:
    """Decoder LMs ship without a padding token, and their classifiers then refuse batches larger than one. Pad with
    the end-of-text token (the usual fix, e.g. in TRL): the classifier reads the last token that is not padding, and
    the attention mask keeps padding out of every other one. The model's config learns the id, so it reloads. A
    decoder whose config names another padding id than its tokenizer pads with would read padding as the last real
    token of every padded example: the tokenizer, which pads, decides."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError(f"{type(tokenizer).__name__} has no padding, end-of-text or unknown token to pad "
                             "batches with; add one (tokenizer.add_special_tokens) and save the tokenizer")
        tokenizer.pad_token = fallback
        logger.info("The tokenizer has no padding token: padding with %r", fallback)
    configured = getattr(model.config, "pad_token_id", None)
    if configured is not None and configured != tokenizer.pad_token_id and is_decoder_classifier(model):
        logger.warning("%s's config pads with id %d, its tokenizer with %d (%r): the classifier, which reads the last "
                       "token that is not padding, is given the tokenizer's", type(model).__name__, configured,
                       tokenizer.pad_token_id, tokenizer.pad_token)
        configured = None
    if configured is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def _crashes_channels_last(module: torch.nn.Module) -> bool:
    """Layers whose backward pass torch's CPU kernels crash on (a segmentation fault or a heap corruption, no
    Python error) given a channels-last input: GroupNorm (PoolFormer, BiT, MobileViTV2) on an input that needs no
    gradient, as behind frozen blocks; a 1x1 convolution of stride 2 with fewer than 16 channels in or out, on maps
    of 48 px and more (a tiny RegNet's shortcut, as transformers' tests shape it; torch 2.13, one such layer: 9 of
    11 channel pairs under 16 crashed, none of 6 from 16 to 40)."""
    if isinstance(module, torch.nn.GroupNorm):
        return True
    return (isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1) and max(module.stride) > 1
            and min(module.in_channels, module.out_channels) < 16)


def _separate_pairs(tokenizer, choices) -> None:
    """Decoder LMs' tokenizers (Qwen2's, GPT-2's) join a sentence pair's two texts with nothing between them: "A man
    sleeps" and "Nobody is awake" read as one run of words, and the model cannot tell where the first ends. Such a
    tokenizer gets a pair template with its separator (else end-of-text) token between the texts. The template is
    part of the tokenizer.json it saves, so the saved folder's tokenizer, and a `pipeline` given `text` and
    `text_pair`, separate a pair as training did. (A decoder pads with that same token: its classifier reads the
    last token that is not padding, so a separator inside the text changes nothing there.)"""
    if not _joins_pairs(tokenizer):
        return
    name, separator = type(tokenizer).__name__, tokenizer.sep_token or tokenizer.eos_token
    backend = getattr(tokenizer, "backend_tokenizer", None)
    existing = backend.post_processor if backend is not None else None
    problem = ("it has no separator or end-of-text token to put there" if separator is None
               else "a slow tokenizer has no `tokenizers` template to save one in" if backend is None
               else "its post-processor adds special tokens of its own, which a second template cannot extend"
               if existing is not None and existing.num_special_tokens_to_add(True) else None)
    if problem:
        logger.warning("%s joins a sentence pair's two texts with nothing between them, and %s: the model reads each "
                       "pair as one text", name, problem)
        choices.add("pair_separator", None, f"{name} joins a pair's texts; {problem}")
        return
    from tokenizers import processors

    template = processors.TemplateProcessing(single="$A", pair=f"$A {separator} $B:1",
                                             special_tokens=[(separator, tokenizer.convert_tokens_to_ids(separator))])
    backend.post_processor = processors.Sequence([existing, template]) if existing else template
    choices.add("pair_separator", separator, f"{name} joins a pair's texts with nothing between them; saved in its "
                "tokenizer.json")


def _joins_pairs(tokenizer) -> bool:
    """Whether the tokenizer puts nothing between a pair's two texts, seen on two words: their pair encoding holds
    their two encodings side by side."""
    first, second = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("first", "second"))
    if not (first and second):  # a vocabulary without these letters (and no unknown token) drops them: no telling
        return False
    pair, joined = tokenizer("first", "second")["input_ids"], first + second
    return any(pair[i:i + len(joined)] == joined for i in range(len(pair) - len(joined) + 1))


TASKS = {task.name: task for task in (ImageTask, TextTask)}


def task_for_config(config) -> type[TaskAdapter]:
    """The task whose `AutoModelFor...Classification` maps this config class: no task flag is needed to load."""
    for task in TASKS.values():
        if type(config) in task().auto_model_class._model_mapping:
            return task
    raise ValueError(f"{type(config).__name__} is a classifier of none of the tasks ({', '.join(TASKS)})")


def task_name_for(model_type: str | None) -> str:
    """The task of a saved config's `model_type` (the card and the demo read config.json; its keys cannot tell: a
    timm config has no image size). Model types transformers does not map to an image classifier are text."""
    from transformers import AutoConfig

    try:
        return task_for_config(AutoConfig.for_model(model_type)).name
    except (ValueError, KeyError, TypeError):
        return TextTask.name

