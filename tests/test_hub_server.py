"""The local Hub (`support.hub_server.LocalHub`) against the real huggingface_hub client: what push tests rely on."""

from __future__ import annotations

import os

import pytest
from support.hub_server import TOKEN, USER, LocalHub, local_hub  # noqa: F401 - local_hub is a fixture

# huggingface_hub's own LFS PUT passes a file object as `data=`, which httpx2 flags; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def _folder(tmp_path):
    """config.json, README.md, report/x.png and a 12 MB model.safetensors (LFS, multipart above 8 MiB)."""
    folder = tmp_path / "out"
    (folder / "report").mkdir(parents=True)
    (folder / "config.json").write_text('{"num_labels": 3}\n')
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# A model\n")
    (folder / "report" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(200))
    (folder / "model.safetensors").write_bytes(os.urandom(12 * 1024 * 1024))
    return folder, {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_upload_folder_is_byte_identical_and_authenticated(local_hub, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(token=TOKEN)  # no endpoint: the fixture pointed huggingface_hub's default at the local hub
    assert api.whoami()["name"] == USER
    url = api.create_repo(f"{USER}/m", private=True, exist_ok=True)
    assert url.repo_id == f"{USER}/m" and url.startswith(local_hub.endpoint)
    assert local_hub.repos[f"{USER}/m"]["private"] is True

    folder, expected = _folder(tmp_path)
    commit = api.upload_folder(folder_path=folder, repo_id=f"{USER}/m", repo_type="model", commit_message="Add model")
    assert local_hub.files(f"{USER}/m") == expected
    assert local_hub.commits(f"{USER}/m")[-1]["title"] == "Add model"
    assert commit.oid == local_hub.repos[f"{USER}/m"]["sha"]

    # The safetensors file went through LFS (batch, two parts, completion), not inline in the commit.
    paths = [path for _, path, _ in local_hub.requests]
    assert f"/{USER}/m.git/info/lfs/objects/batch" in paths
    assert sum(p.startswith("/lfs-upload/") and not p.endswith("/complete") for p in paths) >= 2
    # Every Hub API call carried the token as a Bearer header (LFS part PUTs are authorised by signed URLs, like S3).
    api_calls = [(path, auth) for _, path, auth in local_hub.requests if path.startswith("/api/") or ".git/" in path]
    assert api_calls and all(auth == f"Bearer {TOKEN}" for _, auth in api_calls)

    info = api.model_info(f"{USER}/m")
    assert info.private is True and info.sha == commit.oid
    assert {s.rfilename for s in info.siblings} == set(expected)
    assert sorted(api.list_repo_files(f"{USER}/m")) == sorted(expected)

    # Re-uploading the same folder is a no-op for the client (the preupload oids match).
    api.upload_folder(folder_path=folder, repo_id=f"{USER}/m", commit_message="Again")
    assert local_hub.commits(f"{USER}/m")[-1]["title"] == "Add model"

    # Downloads: private repo needs the token; the LFS file comes back byte-identical.
    got = hf_hub_download(f"{USER}/m", "model.safetensors", token=TOKEN, cache_dir=tmp_path / "cache")
    assert open(got, "rb").read() == expected["model.safetensors"]
    got = hf_hub_download(f"{USER}/m", "report/x.png", token=TOKEN, cache_dir=tmp_path / "cache")
    assert open(got, "rb").read() == expected["report/x.png"]


def test_wrong_or_missing_token_is_refused(local_hub):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_wrong").create_repo(f"{USER}/m")
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_wrong").whoami()
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=False).create_repo(f"{USER}/m")
    assert err.value.response.status_code == 401
    assert local_hub.repos == {}

    # Uploading into an existing repo with a wrong token fails too, and changes nothing.
    HfApi(token=TOKEN).create_repo(f"{USER}/m")
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_wrong").upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id=f"{USER}/m")
    assert err.value.response.status_code == 401
    assert local_hub.files(f"{USER}/m") == {}
    # Another user's namespace is forbidden even with a valid token.
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=TOKEN).create_repo("bob/m")
    assert err.value.response.status_code == 403


def test_space_sdk_and_exist_ok(local_hub):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=local_hub.endpoint, token=TOKEN)
    url = api.create_repo(f"{USER}/demo", repo_type="space", space_sdk="gradio", private=False, exist_ok=True)
    assert url.repo_type == "space" and url.repo_id == f"{USER}/demo"
    again = api.create_repo(f"{USER}/demo", repo_type="space", space_sdk="gradio", exist_ok=True)
    assert again.repo_id == f"{USER}/demo"
    record = local_hub.repos[f"spaces/{USER}/demo"]
    assert record == {"id": f"{USER}/demo", "type": "space", "private": False, "sdk": "gradio", "sha": record["sha"]}
    assert api.space_info(f"{USER}/demo").sdk == "gradio"
    assert api.repo_info(f"{USER}/demo", repo_type="space").private is False

    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError) as err:  # without exist_ok, the Hub's 409
        api.create_repo(f"{USER}/demo", repo_type="space", space_sdk="gradio")
    assert err.value.response.status_code == 409


def test_auto_mode_with_xet_left_on(tmp_path, monkeypatch):
    """Xet left on in the client (no fixture): lfs="auto" answers "regular", so large files arrive inline, intact."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils._runtime import is_xet_available

    from support.hub_server import point_hf_hub_at

    folder, expected = _folder(tmp_path)
    with LocalHub() as hub:
        point_hf_hub_at(monkeypatch, hub.endpoint, disable_xet=False)
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo(f"{USER}/inline")
        api.upload_folder(folder_path=folder, repo_id=f"{USER}/inline", commit_message="inline")
        assert hub.files(f"{USER}/inline") == expected
        went_lfs = any(path.startswith("/lfs-upload/") for _, path, _ in hub.requests)
        assert went_lfs is (not is_xet_available())
        # Downloads are plain HTTP even with Xet on: the resolve route sends no X-Xet-Hash header.
        got = api.hf_hub_download(f"{USER}/inline", "model.safetensors", cache_dir=tmp_path / "cache")
        assert open(got, "rb").read() == expected["model.safetensors"]
        assert not hub.errors
