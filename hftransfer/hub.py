"""Push an output folder to the Hub, after checks that catch what breaks published models.

Checks, each with a message that says how to fix it: real label names in `config.json` (not `LABEL_0`), the image
processor or tokenizer saved beside the model, results in the card's metadata, weights in safetensors only, and no
token in any file. Only the main process pushes. The token comes from `--hub_token`, else `HF_TOKEN` or the stored
login, as in `transformers`; it is never written anywhere.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError, is_the_machines
from .outputs import (CARD, CONFIG, ONNX_FILE, RUN_RECORD, STAGE_PREFIX, STAGING, OutputFolderError,
                      read_json)

logger = logging.getLogger(__name__)

PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer_config.json", "tokenizer.json")
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")
NOT_UPLOADED = ["checkpoint-*", "checkpoint-*/**", f"{STAGE_PREFIX}*", f"{STAGE_PREFIX}*/**", "runs/**", ".*",
                f"{STAGING}/**"]
TOKEN_PATTERN = re.compile(rb"hf_[A-Za-z0-9]{30,}")


class PushError(InputError, RuntimeError):
    """A push the Hub refused, or one this folder cannot make."""


@contextmanager
def hub_errors(doing: str):
    """What the Hub or the way to it refuses (no network, offline mode, a token it does not accept, a repository
    it will not create) as a PushError saying what was being done, without a traceback. Errors of this machine
    (a file that cannot be read: they carry an errno) keep theirs."""
    from huggingface_hub.errors import HfHubHTTPError

    # HfHubHTTPError and offline mode are OSErrors; a failed connection is the HTTP library's own error, the base
    # class HfHubHTTPError shares with it (whichever library the installed huggingface_hub uses)
    network = tuple(base for base in HfHubHTTPError.__bases__ if base is not OSError)
    try:
        yield
    except (OSError, *network) as err:
        if is_the_machines(err):
            raise
        raise PushError(f"{doing}: {type(err).__name__}: {err}") from None


def uploaded_files(folder: Path) -> list[Path]:
    from huggingface_hub.utils import filter_repo_objects

    relative = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return [folder / p for p in filter_repo_objects(relative, ignore_patterns=NOT_UPLOADED)]


def check_repo_id(repo_id: str, flag: str) -> None:
    """A repo or Space id the Hub would refuse is an error before anything is written or trained (it was a
    validation traceback after training, and after `push` had renamed the local card for it)."""
    problem = repo_id_problem(repo_id)
    if problem:
        raise PushError(f"{flag} {repo_id}: {problem}")


def repo_id_problem(repo_id: str) -> str | None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        return f"not a Hub id ({' '.join(str(err).split())})"
    return None


def problems(folder: str | Path, token: str | None = None) -> list[str]:
    """Everything that would make the pushed model broken or unsafe; empty when it can go."""
    folder = Path(folder)
    found = []
    config_path = folder / CONFIG
    if not config_path.is_file():
        return [f"{folder}: no {CONFIG}: not a saved model folder"]
    try:
        config = read_json(config_path)
    except OutputFolderError as err:
        return [str(err)]
    names = list((config.get("id2label") or {}).values()) or config.get("label_names") or []  # timm's: label_names
    if not names or all(re.fullmatch(r"LABEL_\d+", str(v)) for v in names):
        found.append("config.json has no real label names (id2label is LABEL_0, LABEL_1, ...): the Hub widget and "
                     "pipelines would show those; train with hftransfer or set config.id2label")
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        found.append(f"no image processor or tokenizer saved ({' / '.join(PROCESSOR_FILES)}): save it with "
                     "processor.save_pretrained(folder), or the widget and the demo cannot preprocess inputs")
    if not list(folder.glob("*.safetensors")) and not (folder / ONNX_FILE).is_file():
        found.append(f"no *.safetensors weights (nor an exported {ONNX_FILE}): save with safe_serialization (the "
                     "default)")
    files = uploaded_files(folder)
    pickled = [p.name for p in files if any(p.match(g) for g in PICKLED_WEIGHTS) and p.name != "training_args.bin"]
    if pickled:
        found.append(f"pickled weights would be uploaded ({', '.join(pickled)}): only safetensors are pushed; "
                     "remove them")
    found += _card_problems(folder)
    found += _token_problems(files, token)
    return found


def _card_problems(folder: Path) -> list[str]:
    from huggingface_hub import ModelCard

    card_path = folder / CARD
    if not card_path.is_file():
        writer = (f"run `hftransfer card {folder}`" if (folder / RUN_RECORD).is_file() else
                  "write one (huggingface_hub.ModelCard); this is no hftransfer output folder, which `hftransfer card` "
                  "writes one for")
        return [f"no model card (README.md): {writer}"]
    try:
        results = ModelCard.load(card_path).data.eval_results
    except Exception as err:  # huggingface_hub raises several types for malformed metadata
        return [f"README.md metadata does not parse: {err}"]
    return [] if results else ["README.md has no results in its metadata (model-index): rebuild it with "
                               "`hftransfer card OUTPUT_DIR` after evaluation"]


def _token_problems(files: list[Path], token: str | None) -> list[str]:
    secrets = [t.encode() for t in (token, os.environ.get("HF_TOKEN"), _stored_login()) if t]
    leaking = []
    for path in files:
        content = path.read_bytes()
        if TOKEN_PATTERN.search(content) or any(secret in content for secret in secrets):
            leaking.append(path.name)
    return [f"a Hub token is written in {', '.join(leaking)}: remove it before pushing"] if leaking else []


def create_repo(api, repo_id: str, private: bool | None, repo_type: str = "model", **options) -> str:
    """Create the repository if it is not there. The Hub keeps an existing repository's visibility, so `--private`
    into an existing public one is an error before anything is uploaded (the upload went public without a word)."""
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **options)
    if private and not api.repo_info(repo_id, repo_type=repo_type).private:
        raise PushError(f"{repo_id}: a public {repo_type} repository already; --private only creates private ones, "
                        "and nothing was uploaded: make it private in its settings on the Hub, or leave out --private")
    return str(url)


@contextmanager
def _card_named_for(folder: Path, repo_id: str):
    """The card names the repo while it is uploaded, so its usage loads the pushed model; an upload that fails puts
    the card back as it was (it stayed named for a repo that never received it)."""
    from .card import name_card_for_repo

    card = folder / CARD
    before = card.read_bytes()
    if not name_card_for_repo(folder, repo_id):
        logger.warning("%s is not the card hftransfer wrote (edited?): left as it is, so its usage may not name %s; "
                       "`hftransfer card %s --model_name %s` rebuilds it", CARD, repo_id, folder, repo_id)
    try:
        yield
    except BaseException:
        card.write_bytes(before)
        raise


def _stored_login() -> str | None:
    """The token `hf auth login` stored, read as written (huggingface_hub's get_token stops at HF_TOKEN, and may
    raise: an OIDC exchange)."""
    from huggingface_hub import constants

    try:
        return Path(constants.HF_TOKEN_PATH).read_text().strip() or None
    except FileNotFoundError:
        return None


def push(folder: str | Path, repo_id: str | None = None, token: str | None = None, private: bool | None = None,
         commit_message: str = "Upload model trained with hftransfer") -> str:
    """Check `folder`, create the repo if needed and upload. `repo_id` without a namespace goes under the token's
    user, as `transformers` does; the default is the folder's name. The card is named for the repo first, so its
    usage loads the pushed model (put back if the upload fails). Returns the repo URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    found = problems(folder, token)
    if found:
        raise PushError(f"Not pushing {folder}:\n" + "\n".join(f"  - {p}" for p in found))
    api = HfApi(token=token)
    repo_id = repo_id or folder.resolve().name
    check_repo_id(repo_id, "--repo_id")
    if "/" not in repo_id:
        with hub_errors("asking the Hub whose token this is"):
            repo_id = f"{api.whoami()['name']}/{repo_id}"
    with hub_errors(f"uploading {folder} to {repo_id}"):
        url = create_repo(api, repo_id, private)
        with _card_named_for(folder, repo_id):
            api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message=commit_message,
                              ignore_patterns=NOT_UPLOADED)
    logger.info("Pushed %s to %s", folder, url)
    return url
