"""Hub publishing and fetching, with huggingface_hub's own cache layout standing in for the network."""

import pytest

from retrieval.hub import HubUnavailable, NotCached, fetch, index_files, push, push_index
from retrieval.index import Index, build_index
from tests.fake_hub import FakeHubApi
from tests.helpers import make_collection


def test_push_then_fetch_from_offline_cache(tmp_path, micro_backbone):
    make_collection(tmp_path / "images")
    build_index(tmp_path / "images", tmp_path / "index", micro_backbone, progress=False)
    update = Index.load(tmp_path / "index").update_metadata({"red-circle": {"tags": ["red"]}})
    assert len(list((tmp_path / "index" / "versions").iterdir())) == 2
    api, cache = FakeHubApi(), tmp_path / "hf-cache"
    result = push_index(tmp_path / "index", "museum/paintings", api=api)
    assert "museum/paintings" in str(result) and ("create_repo", "museum/paintings") in api.calls
    live = {"manifest.json", "vectors.npy", "items.jsonl", "map.npy", "norms.npy"}
    pushed = {name.split("/")[-1] for name in result.uploaded if name.startswith("versions/")}
    assert pushed == live  # only the live version, whole
    api.snapshot_into(cache, "museum/paintings")
    local = fetch("hf-hub:museum/paintings", cache_dir=str(cache))
    pulled = Index.load(local, micro_backbone)
    assert len(pulled) == len(update) and pulled.item("red-circle")["tags"] == ["red"]
    assert pulled.thumb_path("blue-square").is_file()


def test_uncached_hub_location_offline_is_a_clear_error(tmp_path):
    with pytest.raises(NotCached, match="cannot be reached"):
        fetch("hf-hub:museum/never-downloaded", cache_dir=str(tmp_path))


def test_index_files_lists_live_version_only(tmp_path, micro_backbone):
    make_collection(tmp_path / "images")
    build_index(tmp_path / "images", tmp_path / "index", micro_backbone, progress=False)
    files = index_files(tmp_path / "index")
    assert files[0] == "CURRENT" and any(name.endswith("vectors.npy") for name in files)
    assert sum(name.startswith("thumbs/") for name in files) == 8


def _folder(root, files: dict[str, bytes]):
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_a_second_push_of_an_unchanged_folder_uploads_nothing(tmp_path):
    folder = _folder(tmp_path, {"a.npy": b"\x00" * 100, "notes.txt": b"hello", "CURRENT": b"v1"})
    api = FakeHubApi()
    first = push(folder, "org/name", api=api)
    assert first.uploaded[-1] == "CURRENT"
    assert sorted(first.uploaded) == ["CURRENT", "a.npy", "notes.txt"]
    second = push(folder, "org/name", api=api)
    assert second.uploaded == [] and second.commits == [] and "up to date" in str(second)
    assert len(api.commits) == len(first.commits) == 2  # CURRENT goes last, in its own commit
    (folder / "notes.txt").write_bytes(b"hellO")  # same size, other content: the hash decides
    (folder / "a.npy").write_bytes(b"\x01" * 100)
    assert sorted(push(folder, "org/name", api=api).uploaded) == ["a.npy", "notes.txt"]


def test_an_interrupted_push_resumes_with_only_the_missing_files(tmp_path):
    names = [f"thumbs/{n}.jpg" for n in range(7)] + ["versions/v1/vectors.npy", "CURRENT"]
    folder = _folder(tmp_path, {name: name.encode() * 3 for name in names})
    broken = FakeHubApi(fail_on_commit=3)
    with pytest.raises(HubUnavailable, match="run the same command again"):
        push(folder, "org/name", api=broken, max_files=3)
    done = broken.uploaded()
    assert len(done) == 6 and "CURRENT" not in done  # two commits of three went through
    assert "CURRENT" not in broken.files("org/name")  # the pointer never precedes its files
    resumed = FakeHubApi()
    resumed.repos = broken.repos  # the same remote, reached again
    result = push(folder, "org/name", api=resumed, max_files=3)
    assert sorted(result.uploaded) == sorted(set(names) - set(done))
    assert result.uploaded[-1] == "CURRENT" and len(result.commits) == 2
    assert {p: d for p, d in resumed.files("org/name").items() if p != ".gitattributes"} == {
        name: name.encode() * 3 for name in names
    }


def test_pushing_an_index_again_removes_the_old_version_from_the_repo(tmp_path, micro_backbone):
    make_collection(tmp_path / "images")
    build_index(tmp_path / "images", tmp_path / "index", micro_backbone, progress=False)
    api = FakeHubApi()
    push_index(tmp_path / "index", "museum/paintings", api=api)
    old = (tmp_path / "index" / "CURRENT").read_text()
    Index.load(tmp_path / "index").update_metadata({"red-circle": {"title": "Red"}})
    second = push_index(tmp_path / "index", "museum/paintings", api=api)
    assert not [p for p in second.uploaded if p.startswith("thumbs/")]  # thumbnails unchanged
    assert second.deleted and all(p.startswith(f"versions/{old}/") for p in second.deleted)
    remote = api.files("museum/paintings")
    assert not [p for p in remote if p.startswith(f"versions/{old}/")] and "CURRENT" in remote
