import json
import subprocess
import sys

from conftest import save_tiny_checkpoint


def hftransfer(*args):
    return subprocess.run([sys.executable, "-m", "hftransfer.cli", *args], capture_output=True, text=True)


def test_freeze_report_without_training(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "vit")
    done = hftransfer("freeze-report", str(checkpoint), "--strategy", "fine_tune", "--unfreeze_last_n", "1",
                      "--json")
    assert done.returncode == 0, done.stderr
    assert "strategy=fine_tune" in done.stdout and "base.block.3" in done.stdout
    plan = json.loads(done.stdout[done.stdout.index("{"):])["plan"]
    assert all(n.startswith(("vit.layers.3.", "vit.encoder.layer.3.", "vit.layernorm", "classifier"))
               for n in plan["trainable"])
    (tmp_path / "freeze_plan.json").write_text(json.dumps(plan))
    again = hftransfer("freeze-report", str(checkpoint), "--plan", str(tmp_path / "freeze_plan.json"))
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == done.stdout.split("\n{")[0].splitlines()[-1]


def test_freeze_report_names_the_nearest_parameters(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "mobilenet_v2")
    done = hftransfer("freeze-report", str(checkpoint), "--unfreeze", "mobilenet_v2.layers.*")
    assert done.returncode != 0 and "matches no parameter" in done.stderr and "mobilenet_v2.layer" in done.stderr


def test_zoo_list_and_prepare(mobilenet_zoo):
    listed = hftransfer("zoo", "list")
    assert listed.returncode == 0 and "zoo:mobilenet_v2" in listed.stdout and "built" in listed.stdout
    prepared = hftransfer("zoo", "prepare", "mobilenet_v2")
    assert prepared.stdout.strip() == str(mobilenet_zoo)
