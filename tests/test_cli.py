import json
import types

import pytest
from conftest import save_tiny_checkpoint

from hftransfer import cli


@pytest.fixture
def hftransfer(capsys):
    """The command line in this process (a subprocess would spend 6 s a call importing torch and transformers):
    its exit status, standard output, and standard error with the exit message."""
    def run(*args):
        code, message = 0, ""
        try:
            cli.main(list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
            message = exit_.code if isinstance(exit_.code, str) else ""
        out, err = capsys.readouterr()
        return types.SimpleNamespace(returncode=code, stdout=out, stderr=err + message)

    return run


def test_freeze_report_without_training(tmp_path, hftransfer):
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


def test_freeze_report_names_the_nearest_parameters(tmp_path, hftransfer):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "mobilenet_v2")
    done = hftransfer("freeze-report", str(checkpoint), "--unfreeze", "mobilenet_v2.layers.*")
    assert done.returncode != 0 and "matches no parameter" in done.stderr and "mobilenet_v2.layer" in done.stderr


def test_zoo_list_and_prepare(mobilenet_zoo, hftransfer):
    listed = hftransfer("zoo", "list")
    assert listed.returncode == 0 and "zoo:mobilenet_v2" in listed.stdout and "built" in listed.stdout
    prepared = hftransfer("zoo", "prepare", "mobilenet_v2")
    assert prepared.stdout.strip() == str(mobilenet_zoo)
