"""`hftransfer publish-space`: upload the Space template with the hftransfer package and a model as a Gradio Space.

The template (`space_template/`: app.py, README.md with the Spaces front matter, requirements.txt) is package data,
so an installed hftransfer publishes as a checkout does. A local output folder goes into the Space as `model/` (after
the same checks as a model push); a Hub id is written to `model_id.txt` and into the front matter's `models:`, so the
Space page links the model. The package itself is uploaded beside `app.py`, so the Space runs without hftransfer
being on PyPI.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from .hub import PushError, check_repo_id, create_repo, hub_errors, problems, uploaded_files

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = PACKAGE_DIR / "space_template"
SPACE_FILES = ("app.py", "README.md", "requirements.txt")
# Not needed in the Space's copy of the package: the embedded training samples, and the template (it is the root)
NOT_IN_SPACE_PACKAGE = ("__pycache__", "samples", TEMPLATE_DIR.name)


def stage_space(model: str, target: Path) -> Path:
    """Lay out the Space's files in `target`: app, front matter, requirements, package, and the model or its id. A
    path that is not a model's folder is an error (`modeling.checkpoint_path`), not a Hub id in `model_id.txt`."""
    from .modeling import checkpoint_path
    from .zoo import is_zoo_name

    local = Path(checkpoint_path(model))
    if is_zoo_name(model):
        raise PushError(f"{model}: a pretrained checkpoint of the zoo, not a model trained on your data: train from it "
                        "(`hftransfer train`) and publish the output folder")
    for name in SPACE_FILES:
        shutil.copy2(TEMPLATE_DIR / name, target / name)
    shutil.copytree(PACKAGE_DIR, target / "hftransfer", ignore=shutil.ignore_patterns(*NOT_IN_SPACE_PACKAGE))
    if local.is_dir():
        found = problems(local)
        if found:
            raise PushError(f"Not publishing {local}:\n" + "\n".join(f"  - {p}" for p in found))
        for file in uploaded_files(local):  # what a push uploads, after the same token check (the copy's own
            if file.name != "training_args.bin":  # patterns missed runs/, TensorBoard's logs)
                copy = target / "model" / file.relative_to(local)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, copy)
    else:
        (target / "model_id.txt").write_text(model + "\n")
        readme = target / "README.md"
        readme.write_text(re.sub(r"^models: \[\]$", f"models:\n- {model}", readme.read_text(), flags=re.M))
    return target


def publish_space(model: str, space_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Create the Space (sdk gradio) if needed and upload it; returns its URL."""
    from huggingface_hub import HfApi

    check_repo_id(space_id, "--space_id")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging:
        folder = stage_space(model, Path(staging))  # the model checked before the Hub is asked anything
        with hub_errors(f"publishing the Space {space_id}"):
            if (folder / "model_id.txt").is_file() and not _on_the_hub(api, model):
                raise PushError(f"{model}: no such model on the Hub, or none this token can read: the Space would "
                                "load nothing")
            if "/" not in space_id:
                space_id = f"{api.whoami()['name']}/{space_id}"
            url = create_repo(api, space_id, private, repo_type="space", space_sdk="gradio")
            api.upload_folder(folder_path=folder, repo_id=space_id, repo_type="space",
                              commit_message="Demo of a model trained with hftransfer")
    return url


def _on_the_hub(api, model: str) -> bool:
    from .modeling import checkpoint_errors

    with checkpoint_errors(model):  # a malformed Hub id
        return api.repo_exists(model)
