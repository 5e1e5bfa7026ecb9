"""Report, model card and push: real runs, the card parsed back with huggingface_hub, and pushes to a local HTTP
endpoint that speaks the Hub API (`support.hub_server.LocalHub`, through HF_ENDPOINT): no real Hub is reachable here."""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import ROOT, save_tiny_checkpoint, save_tiny_text_checkpoint, write_reviews_csv
from huggingface_hub import ModelCard
from PIL import Image
from support.hub_server import TOKEN, USER, local_hub  # noqa: F401 - local_hub is a fixture

from hftransfer import cli, hub, recipe, saving
from hftransfer.args import parse_args
from hftransfer.tasks import ImageTask
from hftransfer.training import TransferRun

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def local_files(folder):
    """What a push must deliver: every file but intermediate checkpoints and hidden bookkeeping (`.hftransfer_*`)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.relative_to(folder).parts[0].startswith(("checkpoint-", "stage-", "."))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny staged image run, shared by the card and check tests (they copy it before breaking it)."""
    from conftest import make_image_folder

    root = tmp_path_factory.mktemp("trained")
    checkpoint = save_tiny_checkpoint(root / "ckpt", "vit", num_labels=7)
    classes = ("square", "hstripes", "vstripes", "check3", "check4", "check5", "check6")
    train, validation = (make_image_folder(root / "train", 6, classes, seed=0),
                         make_image_folder(root / "validation", 3, classes, seed=1))
    out = root / "out"
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_dir", str(train), "--validation_dir",
                      str(validation), "--output_dir", str(out), "--head_epochs", "2", "--num_train_epochs", "2",
                      "--disable_tqdm", "true"])
    transfer = TransferRun(run, ImageTask(run.data))
    return out, transfer, transfer.execute()


def test_run_leaves_report_and_card_with_the_right_numbers(trained):
    out, transfer, metrics = trained
    for key in ("eval_accuracy", "eval_f1_macro", "eval_precision_macro", "eval_recall_macro", "eval_top_5_accuracy"):
        assert 0 <= metrics[key] <= 1, key
    report = out / "report"
    for name in ("confusion_matrix.png", "training_curves.png", "per_class.md", "report.md"):
        assert (report / name).is_file(), name
    assert Image.open(report / "confusion_matrix.png").size[0] > 300
    accuracy_logged = [entry["train_accuracy"] for stage in transfer.history for entry in stage["log"]
                       if "train_accuracy" in entry]
    assert len(accuracy_logged) == 4 and all(0 <= a <= 1 for a in accuracy_logged)  # every epoch of both stages
    per_class = (report / "per_class.md").read_text()
    assert sum(f"| {label} " in per_class for label in transfer.labels) == 7

    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.pipeline_tag == "image-classification" and data.library_name == "transformers"
    assert {"hftransfer", "transfer-learning"} <= set(data.tags)
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results["accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-4)
    assert results["f1"] == pytest.approx(metrics["eval_f1_macro"], abs=1e-4)
    assert results["top_5_accuracy"] == pytest.approx(metrics["eval_top_5_accuracy"], abs=1e-4)
    assert "](report/confusion_matrix.png)" in card.text and "](report/training_curves.png)" in card.text
    assert "staged" in card.text and "pipeline(" in card.text and "Intended use" in card.text
    assert data.base_model is None  # a local checkpoint is not a Hub id: no false `base_model`


def test_a_model_name_with_a_quote_still_gives_a_card_snippet_that_is_python(trained, tmp_path):
    """`card --model_name 'a"b'` wrote `pipeline(..., model="a"b")`."""
    import ast

    from hftransfer.card import write_card

    folder = tmp_path / "copy"
    shutil.copytree(trained[0], folder)
    text = write_card(folder, 'team/a"b').read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    call = ast.parse(snippet).body[1].value  # classifier = pipeline(..., model=...)
    assert [k.value.value for k in call.keywords if k.arg == "model"] == ['team/a"b']


def test_a_card_name_on_two_lines_or_no_hub_id_is_a_flag_error(trained, tmp_path, capsys):
    """A newline split the card's title; `a/b/c` made a snippet that loads nothing. The card is left as it was."""
    folder = shutil.copytree(trained[0], tmp_path / "copy")
    card = (folder / "README.md").read_text()
    for name, message in [("team\nmodel", r"expected a name on one line, got 'team\\nmodel'"),
                          ("a/b/c", "a/b/c: not a Hub id"), (" ", "expected a name on one line")]:
        with pytest.raises(SystemExit):
            cli.main(["card", str(folder), "--model_name", name])
        assert re.search(f"argument --model_name: {message}", capsys.readouterr().err)
    assert (folder / "README.md").read_text() == card
    cli.main(["card", str(folder), "--model_name", "team/my-model"])  # a Hub id and a bare name are names
    cli.main(["card", str(folder), "--model_name", "My model, take 2"])
    assert ModelCard.load(folder / "README.md").data.model_name == "My model, take 2"


def test_push_from_a_recipe_run_is_byte_identical(local_hub, trained, tmp_path):
    out, transfer, _ = trained
    folder = tmp_path / "image-model"
    shutil.copytree(out, folder)
    args = replace(transfer.args, output_dir=str(folder), push_to_hub=True, hub_model_id="image-model",
                   hub_token=TOKEN, hub_private_repo=True)
    url = saving.push(args)  # what the recipe calls after saving
    assert url.startswith(local_hub.endpoint)
    assert local_hub.repos[f"{USER}/image-model"]["private"] is True  # namespace from whoami, like transformers
    assert local_hub.files(f"{USER}/image-model") == local_files(folder)


def test_a_pushed_card_names_its_repo_and_its_snippet_loads_the_pushed_model(local_hub, trained, tmp_path, caplog,
                                                                             monkeypatch):
    out, _, _ = trained
    folder = tmp_path / "image-model"
    shutil.copytree(out, folder)
    hub.push(folder, token=TOKEN)  # the folder's name, under the token's user
    repo = f"{USER}/image-model"
    assert local_hub.files(repo) == local_files(folder)
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == repo and card.text.startswith(f"\n# {repo}\n")
    snippet = card.text.split("```python\n", 1)[1].split("```", 1)[0]
    assert f'model="{repo}"' in snippet
    elsewhere = tmp_path / "elsewhere"  # no folder of that name beside the user: the model comes from the Hub
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    Image.new("RGB", (40, 30), (200, 30, 30)).save("photo.jpg")
    scope = {}
    exec(snippet.replace("print(classifier(", "result = (classifier("), scope)
    labels = json.loads((folder / "config.json").read_text())["id2label"].values()
    assert scope["result"][0]["label"] in labels
    cli.main(["card", str(folder)])  # rebuilt later, the card keeps the name it was pushed under
    assert ModelCard.load(folder / "README.md").data.model_name == repo

    edited = tmp_path / "edited"  # a card the user wrote over is theirs: pushed as it is, and the log says so
    shutil.copytree(out, edited)
    mine = (edited / "README.md").read_text() + "\nMy own notes.\n"
    (edited / "README.md").write_text(mine)
    with caplog.at_level("WARNING", logger="hftransfer"):
        hub.push(edited, repo_id="edited", token=TOKEN)
    assert (edited / "README.md").read_text() == mine and "not the card hftransfer wrote" in caplog.text


def test_push_from_the_text_recipe_through_accelerate(local_hub, tmp_path):
    checkpoint = save_tiny_text_checkpoint(tmp_path / "ckpt", "bert")
    out = tmp_path / "text-model"
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", str(ROOT / "recipes" / "text.py"), "--model_name_or_path", str(checkpoint),
         "--train_file", str(write_reviews_csv(tmp_path / "reviews.csv")), "--output_dir", str(out),
         "--head_epochs", "1", "--num_train_epochs", "1", "--disable_tqdm", "true", "--push_to_hub",
         "--hub_model_id", f"{USER}/text-model", "--hub_token", TOKEN],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert local_hub.files(f"{USER}/text-model") == local_files(out)
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "text-classification"
    assert TOKEN not in done.stdout + done.stderr  # nor in any file: the push itself checked that


def test_hftransfer_push_uses_hf_token_from_the_environment(local_hub, trained, monkeypatch, capsys):
    out, _, _ = trained
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    cli.main(["push", str(out), "--repo_id", f"{USER}/cli-model"])
    assert local_hub.repos[f"{USER}/cli-model"]["private"] is False
    assert local_hub.files(f"{USER}/cli-model") == local_files(out)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(SystemExit, match=f"^error: uploading {out} to {USER}/other: HfHubHTTPError: .*401"):
        cli.main(["push", str(out), "--repo_id", f"{USER}/other"])


def test_what_the_hub_refuses_or_cannot_be_reached_is_an_error_saying_what_was_being_done(local_hub, trained,
                                                                                          monkeypatch):
    """A token the Hub does not accept, and no Hub to reach: tracebacks of the HTTP library before."""
    from support.hub_server import point_hf_hub_at
    from support.ports import free_port

    out, _, _ = trained
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    for command, doing in [(["push", str(out), "--repo_id", "other"], "asking the Hub whose token this is"),
                           (["publish-space", "--model", str(out), "--space_id", "demo"], "publishing the Space demo")]:
        with pytest.raises(SystemExit, match=f"^error: {doing}: HfHubHTTPError: .*(401|token)"):
            cli.main(command)
    point_hf_hub_at(monkeypatch, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(SystemExit, match=f"^error: uploading {out} to {USER}/x: ConnectError"):
        cli.main(["push", str(out), "--repo_id", f"{USER}/x"])
    assert not local_hub.repos


def _break_labels(folder):
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(len(config["id2label"]))}
    (folder / "config.json").write_text(json.dumps(config))


def _break_card(folder):
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# no results\n")


BROKEN = {
    "real id2label": (_break_labels, "LABEL_0"),
    "processor saved": (lambda f: (f / "preprocessor_config.json").unlink(), "no image processor or tokenizer"),
    "metrics in the card": (_break_card, "no results in its metadata"),
    "no model card": (lambda f: (f / "README.md").unlink(),
                      r"no model card \(README.md\): run `hftransfer card .*broken`"),
    "no card, no hftransfer record": (lambda f: [(f / n).unlink() for n in ("README.md", "hftransfer_run.json")],
                                      "no model card .*write one .*this is no hftransfer output folder"),
    "config.json cut short": (lambda f: (f / "config.json").write_text('{"id2label": {"0": "squ'),
                              "config.json: not a JSON record hftransfer can read"),
    "token in a file": (lambda f: (f / "notes.txt").write_text(f"token={TOKEN}\n"), "token is written in notes.txt"),
    "hf_ token pattern": (lambda f: (f / "log.txt").write_text("hf_" + "a" * 34), "token is written in log.txt"),
    "pickled weights": (lambda f: (f / "pytorch_model.bin").write_bytes(b"\x80\x04"), "pickled weights"),
    "safetensors": (lambda f: (f / "model.safetensors").unlink(), "no .*safetensors weights"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_each_pre_push_check_refuses_before_any_upload(local_hub, trained, tmp_path, case):
    out, _, _ = trained
    folder = tmp_path / "broken"
    shutil.copytree(out, folder)
    breaker, message = BROKEN[case]
    breaker(folder)
    with pytest.raises(hub.PushError, match=message):
        hub.push(folder, repo_id=f"{USER}/broken", token=TOKEN)
    assert not local_hub.repos  # refused before creating anything
    with pytest.raises(SystemExit, match=message):
        cli.main(["push", str(folder), "--repo_id", f"{USER}/broken", "--hub_token", TOKEN])


def test_space_stages_from_an_installed_wheel(trained, tmp_path):
    """publish-space from hftransfer installed as a wheel, far from any checkout: the Space template is package data.

    The wheel is built from a copy of the sources, so the build leaves nothing in the checkout (build/, egg-info)
    and no stale build/ file can slip in; `-S` keeps the venv's .pth files out, among them the editable install's
    finder, which would map `hftransfer` back to the checkout."""
    source, wheels, installed, space, elsewhere = (tmp_path / name for name in
                                                   ("source", "wheels", "installed", "space", "elsewhere"))
    shutil.copytree(ROOT / "hftransfer", source / "hftransfer", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(wheels), str(source)], check=True, capture_output=True, timeout=120)
    with zipfile.ZipFile(next(wheels.glob("hftransfer-*.whl"))) as wheel:
        wheel.extractall(installed)
    space.mkdir()
    elsewhere.mkdir()
    out, _, _ = trained
    stage = ("import sys; from pathlib import Path; import hftransfer; from hftransfer.space import stage_space; "
             "stage_space(sys.argv[1], Path(sys.argv[2])); print(hftransfer.__file__)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), sysconfig.get_paths()["purelib"]])}
    done = subprocess.run([sys.executable, "-S", "-c", stage, str(out), str(space)], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert Path(done.stdout.strip()).is_relative_to(installed)  # the wheel's hftransfer, not the checkout's
    assert {"app.py", "README.md", "requirements.txt"} <= {p.name for p in space.iterdir()}
    assert (space / "hftransfer" / "demo.py").is_file() and (space / "model" / "config.json").is_file()
    assert not (space / "hftransfer" / "space_template").exists()  # the template is the Space's root, not a copy


def test_a_zoo_checkpoint_is_not_published_as_a_trained_model(local_hub, mobilenet_zoo, capsys):  # noqa: F811
    """`publish-space --model zoo:mobilenet_v2` was refused with the hint to write a card, which `hftransfer card`
    cannot do for a pretrained base; it says what to publish instead."""
    with pytest.raises(SystemExit, match="zoo:mobilenet_v2: a pretrained checkpoint of the zoo, not a model trained"):
        cli.main(["publish-space", "--model", "zoo:mobilenet_v2", "--space_id", "demo", "--hub_token", TOKEN])
    assert not local_hub.repos



def test_a_malformed_hub_id_is_refused_before_anything_is_written(local_hub, trained, tmp_path):  # noqa: F811
    """A validation traceback from create_repo, after push had renamed the local card for the id (and, with
    --push_to_hub, after the whole training)."""
    out, _, _ = trained
    folder = shutil.copytree(out, tmp_path / "copy")
    card = (folder / "README.md").read_text()
    for command in (["push", str(folder), "--repo_id", f"{USER}/m 1"],
                    ["publish-space", "--model", str(folder), "--space_id", f"{USER}/sp 1"]):
        with pytest.raises(SystemExit, match=r"^error: --(repo|space)_id .* 1: not a Hub id \(Repo id must"):
            cli.main([*command, "--hub_token", TOKEN])
    assert (folder / "README.md").read_text() == card and not local_hub.repos
    with pytest.raises(SystemExit, match=r"^error: --hub_model_id alice/bad id: not a Hub id"):
        recipe.main("image", ["--output_dir", str(tmp_path / "run"), "--push_to_hub", "true", "--hub_model_id",
                              "alice/bad id"])
    assert not (tmp_path / "run").exists()


def test_a_space_carries_what_a_push_uploads_and_no_more(local_hub, trained, tmp_path):  # noqa: F811
    """The Space's copy used name patterns that never matched runs/ (TensorBoard's logs, outside the token check)."""
    out, _, _ = trained
    folder = shutil.copytree(out, tmp_path / "copy")
    (folder / "runs" / "x").mkdir(parents=True)
    (folder / "runs" / "x" / "events").write_text("hf_" + "b" * 34)
    cli.main(["publish-space", "--model", str(folder), "--space_id", f"{USER}/sp", "--hub_token", TOKEN])
    uploaded = local_hub.files(f"{USER}/sp", repo_type="space")
    model_files = {name.removeprefix("model/") for name in uploaded if name.startswith("model/")}
    assert model_files == {p.relative_to(folder).as_posix() for p in hub.uploaded_files(folder)} - {"training_args.bin"}
    assert not any(name.startswith("runs/") for name in model_files)


def test_private_into_an_existing_public_repo_is_refused_before_anything_is_uploaded(local_hub, trained,  # noqa: F811
                                                                                      tmp_path):
    """`--private` only creates private repositories: into an existing public one the upload went public silently."""
    out, _, _ = trained
    folder = shutil.copytree(out, tmp_path / "copy")
    hub.push(folder, repo_id=f"{USER}/shared", token=TOKEN)  # public
    cli.main(["publish-space", "--model", str(folder), "--space_id", f"{USER}/shared", "--hub_token", TOKEN])
    before = {kind: local_hub.commits(f"{USER}/shared", repo_type=kind) for kind in ("model", "space")}
    (folder / "notes.md").write_text("a change to upload\n")
    for command in (["push", str(folder), "--repo_id", f"{USER}/shared"],
                    ["publish-space", "--model", str(folder), "--space_id", f"{USER}/shared"]):
        with pytest.raises(SystemExit, match=f"^error: {USER}/shared: a public (model|space) repository already; "
                                             "--private only creates private ones, and nothing was uploaded"):
            cli.main([*command, "--private", "--hub_token", TOKEN])
    assert {kind: local_hub.commits(f"{USER}/shared", repo_type=kind) for kind in ("model", "space")} == before
    hub.push(folder, repo_id=f"{USER}/own", token=TOKEN, private=True)  # a new one is created private, and an
    (folder / "notes.md").write_text("another change\n")  # existing private one takes the next push
    hub.push(folder, repo_id=f"{USER}/own", token=TOKEN, private=True)
    assert local_hub.repos[f"{USER}/own"]["private"] is True and len(local_hub.commits(f"{USER}/own")) == 3


def test_a_push_the_hub_refuses_leaves_the_local_card_as_it_was(local_hub, trained, tmp_path):  # noqa: F811
    """The card was renamed for the repo before the upload, and stayed so when the Hub refused it (403)."""
    from huggingface_hub import HfApi

    out, _, _ = trained
    folder = shutil.copytree(out, tmp_path / "copy")
    local_hub.users.append("someone")  # someone else's public repository, which this token may read, not write
    HfApi(token=TOKEN).create_repo("someone/theirs")
    local_hub.users.remove("someone")
    card = (folder / "README.md").read_bytes()
    with pytest.raises(SystemExit, match=f"^error: uploading {folder} to someone/theirs: HfHubHTTPError: .*403"):
        cli.main(["push", str(folder), "--repo_id", "someone/theirs", "--hub_token", TOKEN])
    assert (folder / "README.md").read_bytes() == card
    hub.push(folder, repo_id=f"{USER}/mine", token=TOKEN)  # a push that lands keeps the card named for its repo
    assert ModelCard.load(folder / "README.md").data.model_name == f"{USER}/mine"


def test_the_stored_login_token_is_found_in_files_as_written(local_hub, trained, tmp_path,  # noqa: F811
                                                             monkeypatch):
    """Only HF_TOKEN and --hub_token were matched literally; the stored login (`hf auth login`) only by the hf_...
    pattern, which a token of another shape does not have."""
    out, _, _ = trained
    folder = shutil.copytree(out, tmp_path / "copy")
    login = "stored-login-secret-0123456789"
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "token").write_text(login)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "e" * 34)  # both read: get_token stopped at HF_TOKEN
    monkeypatch.setenv("HF_OIDC_RESOURCE", "x")  # get_token raised here (an OIDC exchange), a traceback
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "home" / "token"))
    (folder / "notes.txt").write_text(f"login: {login}\n")
    with pytest.raises(hub.PushError, match="token is written in notes.txt"):
        hub.push(folder, repo_id=f"{USER}/m", token=TOKEN)
    assert not local_hub.repos
