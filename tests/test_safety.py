"""Safe by default: safetensors only, no remote code unless asked, no pickle execution in the zoo, no token in
what a run writes or prints, and a demo that serves no file it does not show."""

import json
import logging
import re

import pytest
from conftest import save_tiny_checkpoint

from hftransfer.args import ModelArguments
from hftransfer.modeling import ModelError, load_model, load_trained
from hftransfer.tasks import ImageTask


def test_pickled_weights_are_refused(tmp_path):
    import torch
    import transformers
    from transformers import AutoModelForImageClassification

    folder = save_tiny_checkpoint(tmp_path / "ckpt", "vit")
    model = AutoModelForImageClassification.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"no safetensors weights \(found pytorch_model.bin\)"):
        load_model(ImageTask(), ModelArguments(model_name_or_path=str(folder)), ["a", "b"])
    with pytest.raises(ModelError, match="only safetensors are loaded") as refused:  # the demo's and the CLI's too
        load_trained(str(folder))
    advice = re.search(r"`(transformers\.\w+)\.from_pretrained\(path\)\.save_pretrained\(path\)`", str(refused.value))
    assert advice and advice[1] == "transformers.ViTForImageClassification"
    getattr(transformers, advice[1].split(".")[1]).from_pretrained(folder).save_pretrained(folder)  # as advised
    assert torch.equal(load_trained(str(folder)).classifier.weight, model.classifier.weight)  # its head kept


def test_remote_code_is_not_run_unless_asked(tmp_path):
    folder = save_tiny_checkpoint(tmp_path / "ckpt", "vit")
    marker = tmp_path / "remote-code-ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "from transformers import ViTConfig\nclass EvilConfig(ViTConfig):\n"
                                    "    model_type = 'evil'\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="trust_remote_code"):
        load_model(ImageTask(), ModelArguments(model_name_or_path=str(folder)), ["a", "b"])
    assert not marker.exists()


def test_zoo_loads_the_state_dict_without_running_pickled_code(tmp_path, monkeypatch):
    import pickle

    from hftransfer import zoo

    marker = tmp_path / "pickle-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    weights = tmp_path / "weights" / zoo.MOBILENET_FILE
    weights.parent.mkdir()
    weights.write_bytes(pickle.dumps({"features.0.0.weight": Payload()}))

    class Digest:  # the hash check is the first wall; this test is about the second (weights_only=True)
        def __init__(self, data):
            pass

        def hexdigest(self):
            return "b0353104" + "0" * 56

    monkeypatch.setattr(zoo, "_package_dir", lambda *args: tmp_path)
    monkeypatch.setattr(zoo.hashlib, "sha256", Digest)
    with pytest.raises(pickle.UnpicklingError):
        zoo._build_mobilenet_v2(tmp_path / "out")
    assert not marker.exists()


def test_token_never_reaches_files_logs_or_card(tmp_path, image_folders, capfd, caplog):
    """The recipe in this process: everything written to its standard streams (capfd) and every log record."""
    from hftransfer.recipe import main

    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "vit")
    token = "hf_" + "Secret" * 6
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        main("image", ["--model_name_or_path", str(checkpoint), "--train_dir", str(image_folders[0]), "--output_dir",
                       str(out), "--head_epochs", "1", "--num_train_epochs", "1", "--hub_token", token,
                       "--save_strategy", "epoch", "--logging_steps", "1"])
    written = capfd.readouterr()
    assert "eval_accuracy" in written.out and "Stage 'head'" in caplog.text  # both were captured
    assert token not in written.out + written.err + caplog.text
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any(p.name == "README.md" for p in files)
    assert any("checkpoint-" in str(p) for p in files)  # checkpoints (with their training_args.bin) checked too
    leaking = [str(p.relative_to(out)) for p in files if token.encode() in p.read_bytes()]
    assert not leaking


def test_demo_serves_no_file_it_does_not_show(mobilenet_zoo):
    import urllib.error
    import urllib.request

    from support.served_demo import Served

    served = Served(mobilenet_zoo)
    try:
        for path in ("/etc/passwd", str(mobilenet_zoo / "model.safetensors"), str(mobilenet_zoo / "config.json")):
            for route in ("gradio_api/file=", "file="):
                with pytest.raises(urllib.error.HTTPError) as err:
                    urllib.request.urlopen(served.url + route + path, timeout=10)
                assert err.value.code in (403, 404), (route, path)
    finally:
        served.close()
