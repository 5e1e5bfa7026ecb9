"""Image processors of every kind take the input size the recipe chooses, or say truthfully that they keep theirs."""

import json

import numpy as np
import pytest
from conftest import make_image_folder, save_tiny_checkpoint, tiny_image_model
from PIL import Image
from support.hub_server import local_hub, upload  # noqa: F401 - a fixture
from transformers import (AutoImageProcessor, ConvNextImageProcessorPil, MobileNetV2ImageProcessorPil,
                          ViTImageProcessorPil, pipeline)

from hftransfer.args import parse_args
from hftransfer.tasks import ImageTask, _processor_size, _set_processor_size
from hftransfer.training import TransferRun

PROCESSORS = {
    "height/width (ViT)": lambda: ViTImageProcessorPil(size={"height": 224, "width": 224}),
    "shortest_edge + crop_size (MobileNetV2)": lambda: MobileNetV2ImageProcessorPil(),
    "shortest_edge + crop_pct (ConvNeXt, as microsoft/resnet-50 ships it)": lambda: ConvNextImageProcessorPil(
        size={"shortest_edge": 224}, crop_pct=0.875),
}


@pytest.mark.parametrize("name", PROCESSORS)
def test_every_processor_kind_outputs_the_size_it_is_set_to(name):
    processor = PROCESSORS[name]()
    assert _set_processor_size(processor, 96)
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8))
    assert processor(images=[wide], return_tensors="pt")["pixel_values"].shape[-2:] == (96, 96)
    assert _processor_size(processor) == 96


def test_a_processor_that_refuses_every_setting_is_left_as_it_was():
    class FixedSize(ViTImageProcessorPil):  # always 224 px, whatever it is told
        def __call__(self, images, **kwargs):
            self.size, self.do_center_crop = {"height": 224, "width": 224}, False
            return super().__call__(images, **kwargs)

    processor = FixedSize(size={"height": 224, "width": 224}, do_center_crop=False)
    before = processor.to_dict()
    assert not _set_processor_size(processor, 96)
    assert processor.to_dict() == before and _processor_size(processor) == 224


def train_head(checkpoint, data, out, caplog, *flags):
    """A feature-extraction run on `data`: the processor it saved, and an image of the data."""
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_dir", str(data), "--output_dir", str(out),
                      "--strategy", "feature_extraction", "--head_epochs", "2", "--disable_tqdm", "true", *flags])
    with caplog.at_level("INFO"):
        TransferRun(run, ImageTask(run.data)).execute()
    return AutoImageProcessor.from_pretrained(out), Image.open(next((data / "square").iterdir()))


def test_resnet_with_its_hub_processor_trains_on_small_images_at_the_size_it_logs(tmp_path, caplog):
    """microsoft/resnet-50's layout: a native ResNet with the ConvNeXt processor it ships (shortest_edge only)."""
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "resnet", processor=ConvNextImageProcessorPil(
        size={"shortest_edge": 224}, crop_pct=0.875))
    saved, image = train_head(checkpoint, make_image_folder(tmp_path / "data", per_class=6), tmp_path / "out", caplog)
    assert "Input size 128 px (checkpoint: 224 px)" in caplog.text  # 32 px images at 4x
    assert type(saved).__name__.startswith("ConvNextImageProcessor")
    assert saved(images=[image], return_tensors="pt")["pixel_values"].shape[-2:] == (128, 128)
    assert json.loads((tmp_path / "out" / "all_results.json").read_text())["eval_accuracy"] >= 0


def test_a_processor_saved_not_to_resize_resizes_to_the_size_it_logs(tmp_path, caplog):
    """`do_resize: false` beside a crop: small images were cropped onto a padded canvas of the logged size (94% of
    each input was padding). The run turns resizing on and says so; a white image fills the whole input."""
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "resnet", processor=ConvNextImageProcessorPil(
        size={"shortest_edge": 224}, crop_pct=0.875, do_resize=False))
    saved, image = train_head(checkpoint, make_image_folder(tmp_path / "data", per_class=4), tmp_path / "out", caplog)
    assert "saved not to resize (do_resize false)" in caplog.text and "Input size 128 px" in caplog.text
    white = saved(images=[Image.new("RGB", (32, 32), "white")], return_tensors="pt")["pixel_values"]
    assert white.shape[-2:] == (128, 128) and float((white.amax((-2, -1)) - white.amin((-2, -1))).max()) < 1e-4


def test_a_processor_that_keeps_proportions_is_made_square_so_oblong_images_batch(tmp_path, caplog):
    """A shortest-edge resize without a crop keeps each image's proportions: 60 x 90 and 90 x 60 px images became
    224 x 336 and 336 x 224 inputs, which no batch can hold (the run stopped before training). The run sets the
    processor to the square it logs, and says so."""
    data = make_image_folder(tmp_path / "data", per_class=4, size=64)
    for i, path in enumerate(sorted(data.rglob("*.png"))):
        Image.open(path).resize((90, 60) if i % 2 else (60, 90)).save(path)
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "mobilenet_v2", processor=MobileNetV2ImageProcessorPil(
        size={"shortest_edge": 224}, do_center_crop=False))
    saved, image = train_head(checkpoint, data, tmp_path / "out", caplog)
    assert "keeps each image's proportions (no crop)" in caplog.text
    oblong = Image.new("RGB", (90, 60), "white")
    assert saved(images=[oblong], return_tensors="pt")["pixel_values"].shape[-2:] == (224, 224)


IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
# preprocessor_config.json as older Hub checkpoints hold it: (family, settings, the size the run must use)
HUB_PROCESSOR_FILES = {
    "microsoft/resnet-50 (feature_extractor_type, an integer size)": ("resnet", {
        "feature_extractor_type": "ConvNextFeatureExtractor", "crop_pct": 0.875, "do_normalize": True,
        "do_resize": True, "resample": 3, "size": 224, **IMAGENET}, 128),
    "google/vit-base-patch16-224 (feature_extractor_type, an integer size)": ("vit", {
        "feature_extractor_type": "ViTFeatureExtractor", "do_normalize": True, "do_resize": True, "resample": 2,
        "size": 224, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}, 32),
    "a fine-tune saved through the ViTFeatureExtractor alias (transformers 4.2x)": ("vit", {
        "image_processor_type": "ViTFeatureExtractor", "feature_extractor_type": "ViTFeatureExtractor",
        "do_normalize": True, "do_resize": True, "resample": 2, "size": {"height": 32, "width": 32}, **IMAGENET}, 32),
}


@pytest.mark.parametrize("name", HUB_PROCESSOR_FILES)
def test_processor_files_of_older_hub_checkpoints_load_train_and_save_under_todays_names(name, tmp_path, caplog):
    family, settings, size = HUB_PROCESSOR_FILES[name]
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", family)
    (checkpoint / "preprocessor_config.json").write_text(json.dumps(settings))
    data = make_image_folder(tmp_path / "data", per_class=4)
    saved, image = train_head(checkpoint, data, tmp_path / "out", caplog)
    assert saved(images=[image], return_tensors="pt")["pixel_values"].shape[-2:] == (size, size)
    written = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert written["image_processor_type"].endswith("ImageProcessor") and "feature_extractor_type" not in written
    assert ("names ViTFeatureExtractor, a class transformers 5 no longer has" in caplog.text) == (
        "image_processor_type" in settings)
    labels = {path.name for path in data.iterdir()}
    assert pipeline("image-classification", model=str(tmp_path / "out"))(image)[0]["label"] in labels


def test_a_processor_of_another_size_than_its_model_is_set_to_the_size_the_model_takes(tmp_path, caplog):
    """A ViT made for 32 px saved with the processor's defaults (224 px), as a hand-made checkpoint often is: the run
    resizes to the model's size and says so; the saved processor makes what the saved model takes."""
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "vit", processor=ViTImageProcessorPil())
    saved, image = train_head(checkpoint, make_image_folder(tmp_path / "data", per_class=4), tmp_path / "out", caplog)
    assert "takes 32 px inputs (its config's image_size), not the 224 px" in caplog.text
    assert saved(images=[image], return_tensors="pt")["pixel_values"].shape[-2:] == (32, 32)
    recorded = json.loads((tmp_path / "out" / "hftransfer_run.json").read_text())
    assert recorded["chosen"]["image_size"]["value"] == 32


def test_an_image_size_the_model_cannot_take_is_said_and_the_size_used_is_recorded(tmp_path, caplog):
    """A ViT's position table is made for its own size: `--image_size 48` cannot be honoured. The run warns, trains
    at 32 px, and its record and card give the 32 it used, not the flag's 48."""
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "vit", processor=ViTImageProcessorPil(
        size={"height": 32, "width": 32}))
    out = tmp_path / "out"
    saved, image = train_head(checkpoint, make_image_folder(tmp_path / "data", per_class=4), out, caplog,
                              "--image_size", "48")
    assert "--image_size 48 not used: ViTForImageClassification needs 32 px inputs; using 32 px" in caplog.text
    assert saved(images=[image], return_tensors="pt")["pixel_values"].shape[-2:] == (32, 32)
    recorded = json.loads((out / "hftransfer_run.json").read_text())["chosen"]["image_size"]
    assert recorded["value"] == 32 and "--image_size 48 not used" in recorded["reason"]
    card = (out / "README.md").read_text()
    assert "| image_size | 32 |" in card and "| image_size | 48 |" not in card


def test_a_model_that_runs_at_its_processors_size_keeps_it_whatever_its_config_says():
    """Dinov2's configs say 518 px and its processors make 224: it interpolates its positions, so nothing changes.
    A ViT at its config's size is asked nothing; at another size it names its config's."""
    from transformers import Dinov2Config, Dinov2ForImageClassification

    from hftransfer.tasks import _config_size_instead

    dinov2 = Dinov2ForImageClassification(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                       image_size=64, patch_size=8))
    assert _config_size_instead(dinov2, 32) is None
    vit = tiny_image_model("vit", image_size=32)
    assert _config_size_instead(vit, 32) is None and _config_size_instead(vit, 224) == 32


@pytest.mark.usefixtures("local_hub")
def test_an_older_fine_tune_and_an_image_folder_by_hub_repo_id(tmp_path, caplog):
    """The Hub path for images, against the local endpoint that speaks the Hub's API: the checkpoint (with a
    processor file saved through the ViTFeatureExtractor alias, read over HTTP) and an image-folder dataset repo."""
    _, settings, size = next(row for name, row in HUB_PROCESSOR_FILES.items() if "alias" in name)
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "vit")
    (checkpoint / "preprocessor_config.json").write_text(json.dumps(settings))
    data = tmp_path / "data"
    make_image_folder(data / "train", 4, seed=0)
    make_image_folder(data / "test", 2, seed=1)
    run = parse_args(["--model_name_or_path", upload(checkpoint, "old-vit"), "--dataset_name",
                      upload(data, "shapes", "dataset"), "--output_dir", str(tmp_path / "out"), "--strategy",
                      "feature_extraction", "--head_epochs", "1", "--cache_dir", str(tmp_path / "hf"),
                      "--disable_tqdm", "true"])
    with caplog.at_level("INFO"):
        TransferRun(run, ImageTask(run.data)).execute()
    assert "names ViTFeatureExtractor, a class transformers 5 no longer has" in caplog.text
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert (results["train_samples"], results["eval_samples"]) == (12, 6)
    saved = AutoImageProcessor.from_pretrained(tmp_path / "out")
    image = Image.open(data / "test" / "square" / "0.png")
    assert saved(images=[image], return_tensors="pt")["pixel_values"].shape[-2:] == (size, size)


def test_deep_and_float_images_keep_their_contrast_in_training_and_prediction(tmp_path):
    """PIL clips 16-bit and 32-bit integer pixels at 255 and rounds 0..1 floats to 0 or 1: a 16-bit scan reached
    the model almost white (99% of its pixels at the top), a float TIFF in two values."""
    folder = make_image_folder(tmp_path / "eight", 1, classes=("a",), size=48)
    Image.open(folder / "a" / "0.png").convert("L").save(tmp_path / "grey.png")
    eight = np.asarray(Image.open(tmp_path / "grey.png"), dtype=np.float64)
    deep = {"sixteen.png": Image.fromarray((eight * 257).astype(np.uint16)),  # read back as I;16
            "thirty-two.tiff": Image.fromarray((eight * 257).astype(np.int32)),  # I, 16-bit values
            "byte-values.tiff": Image.fromarray(eight.astype(np.int32)),  # I, 8-bit values
            "float.tiff": Image.fromarray((eight / 255).astype(np.float32))}  # F, 0..1
    task = ImageTask()
    processor = AutoImageProcessor.from_pretrained(save_tiny_checkpoint(tmp_path / "ckpt", "vit"), backend="pil")
    expected = task.model_inputs(processor, [str(tmp_path / "grey.png")])["pixel_values"]
    for name, image in deep.items():
        image.save(tmp_path / name)
        assert Image.open(tmp_path / name).mode != "L"
        rgb = np.asarray(task.read_input(str(tmp_path / name)), dtype=np.float64)
        assert np.abs(rgb[..., 0] - eight).max() <= 1, name
        pixels = task.model_inputs(processor, [str(tmp_path / name)])["pixel_values"]
        assert (pixels - expected).abs().max() < 0.02, name
