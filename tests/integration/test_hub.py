"""Hub publishing and fetching, with huggingface_hub's own cache layout standing in for the network."""

import shutil

import pytest
from huggingface_hub import HfApi

from retrieval.hub import HubUnavailable, fetch, index_files, push_index
from retrieval.index import Index, build_index
from tests.helpers import make_collection


def _fake_upload_into_cache(cache_dir, captured):
    def upload_folder(self, *, repo_id, folder_path, repo_type, allow_patterns, **kwargs):
        captured.update(repo_id=repo_id, repo_type=repo_type, files=list(allow_patterns))
        commit = "a" * 40
        repo_cache = cache_dir / f"{repo_type}s--{repo_id.replace('/', '--')}"
        snapshot = repo_cache / "snapshots" / commit
        for relative in allow_patterns:
            target = snapshot / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(
                folder_path / relative
                if hasattr(folder_path, "joinpath")
                else f"{folder_path}/{relative}",
                target,
            )
        (repo_cache / "refs").mkdir(parents=True, exist_ok=True)
        (repo_cache / "refs" / "main").write_text(commit)
        return type("Info", (), {"commit_url": f"https://hub.example/{repo_id}/commit/{commit}"})()

    return upload_folder


def test_push_then_fetch_from_offline_cache(tmp_path, micro_backbone, monkeypatch):
    make_collection(tmp_path / "images")
    build_index(tmp_path / "images", tmp_path / "index", micro_backbone, progress=False)
    update = Index.load(tmp_path / "index").update_metadata({"red-circle": {"tags": ["red"]}})
    assert len(list((tmp_path / "index" / "versions").iterdir())) == 2
    captured, cache = {}, tmp_path / "hf-cache"
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: None)
    monkeypatch.setattr(HfApi, "upload_folder", _fake_upload_into_cache(cache, captured))
    url = push_index(tmp_path / "index", "museum/paintings")
    assert "museum/paintings" in url and captured["repo_type"] == "dataset"
    live = {"manifest.json", "vectors.npy", "items.jsonl", "map.npy"}
    pushed = {name.split("/")[-1] for name in captured["files"] if name.startswith("versions/")}
    assert pushed == live  # only the live version, whole
    local = fetch("hf-hub:museum/paintings", cache_dir=str(cache))
    pulled = Index.load(local, micro_backbone)
    assert len(pulled) == len(update) and pulled.item("red-circle")["tags"] == ["red"]
    assert pulled.thumb_path("blue-square").is_file()


def test_uncached_hub_location_offline_is_a_clear_error(tmp_path):
    with pytest.raises(HubUnavailable, match="cannot be reached"):
        fetch("hf-hub:museum/never-downloaded", cache_dir=str(tmp_path))


def test_index_files_lists_live_version_only(tmp_path, micro_backbone):
    make_collection(tmp_path / "images")
    build_index(tmp_path / "images", tmp_path / "index", micro_backbone, progress=False)
    files = index_files(tmp_path / "index")
    assert files[0] == "CURRENT" and any(name.endswith("vectors.npy") for name in files)
    assert sum(name.startswith("thumbs/") for name in files) == 8
