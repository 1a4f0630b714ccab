"""The upload path's exact rules: name checks, every cap at its edge, what is skipped, and the
messages a museum sees. Found by mutation testing (bench/mutation_test.py): each test fails for
a one-line change that the broader upload tests let through."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from dataclasses import replace

import pytest

from retrieval.catalog import Collection, CollectionSpec
from retrieval.config import Settings
from retrieval.errors import BadInput, Conflict, NotFound, TooLarge
from retrieval.uploads import (
    MB,
    check_collection_name,
    create_collection_from_zip,
    delete_uploaded_collection,
    import_zip,
    is_uploaded,
    member_path,
    plan_extraction,
    replace_folder,
    sweep_staging,
    uploaded_specs,
)
from tests.integration.test_uploads import make_zip, png_bytes, zip_of_folder

CAPS = Settings(max_upload_mb=1, max_zip_images=3, max_zip_ratio=10, max_unzipped_mb=2, cache_dir="unused")  # fmt: skip


def message_of(call, *args) -> str:
    with pytest.raises(BadInput) as error:
        call(*args)
    return str(error.value)


# -- names ----------------------------------------------------------------------------------------
def test_collection_names_are_folder_and_url_safe():
    for name in ("a", "0-museum", "my_museum", "x" * 64):
        assert check_collection_name(name) == name
    for name in ("", "x" * 65, "My-Museum", "-museum", "_a", "a b", "a/b", "é", None, 3):
        assert message_of(check_collection_name, name) == (
            f"collection name {name!r} is not allowed: use 1-64 lower-case letters, digits, "
            "'-' or '_', starting with a letter or digit (e.g. 'my-museum')"
        )


@pytest.mark.parametrize(
    "name,path",
    [
        ("a.png", "a.png"), ("./d/./b.JPG", "d/b.JPG"), ("d//c.webp", "d/c.webp"),
        ("d\\e.tif", "d/e.tif"), ("META/metadata.csv", "META/metadata.csv"),
        ("Metadata.JSONL", "Metadata.JSONL"), ("notes.txt", None), ("d/", None), ("", None),
        (".git/x.png", None), ("d/.x.png", None), ("__MACOSX/a.png", None), ("a.png.exe", None),
    ],
)  # fmt: skip
def test_member_paths_keep_images_and_metadata_only(name, path):
    found = member_path(name)
    assert (found.as_posix() if found else None) == path


@pytest.mark.parametrize(
    "name,message",
    [
        ("/a.png", "the zip holds an absolute path '/a.png'; zip a folder's contents instead"),
        ("\\a.png", "the zip holds an absolute path '\\\\a.png'; zip a folder's contents instead"),
        ("c:a.png", "the zip holds an absolute path 'c:a.png'; zip a folder's contents instead"),
        ("a/../b.png", "the zip holds a path leaving its folder ('a/../b.png'); it was refused"),
        ("a\x7f.png", "the zip holds a file name with control characters ('a\\x7f.png')"),
        ("a\x1f.png", "the zip holds a file name with control characters ('a\\x1f.png')"),
    ],
)
def test_unsafe_member_names_are_named(name, message):
    assert message_of(member_path, name) == message


def test_a_name_part_may_be_255_bytes_not_256():
    assert member_path("é" * 125 + "a.png") is not None  # 250 + 5 bytes
    long = "é" * 126 + ".png"  # 252 + 4 bytes
    assert message_of(member_path, long).startswith(
        "the zip holds a file name longer than 255 bytes ('éééé"
    )
    assert message_of(member_path, long).endswith("'...)")


# -- caps -----------------------------------------------------------------------------------------
def plan(members: dict[str, bytes], settings: Settings = CAPS, **zip_options):
    data = make_zip(members, **zip_options)
    return plan_extraction(zipfile.ZipFile(io.BytesIO(data)), len(data), settings)


def test_the_image_cap_counts_images_only_and_is_inclusive():
    members = {f"{n}.png": png_bytes() for n in range(3)} | {
        "metadata.csv": b"id\n",
        "notes.txt": b"x",
    }
    assert sorted(path.as_posix() for _, path in plan(members)) == [
        "0.png",
        "1.png",
        "2.png",
        "metadata.csv",
    ]
    with pytest.raises(TooLarge) as error:
        plan({f"{n}.png": png_bytes() for n in range(4)})
    assert str(error.value) == "the zip holds 4 images; the limit is 3 (SR_MAX_ZIP_IMAGES)"


def test_the_entry_cap_stops_archives_of_many_small_files():
    fine = {f"{n}.txt": b"" for n in range(105)} | {"a.png": png_bytes()}  # 106 = 3 * 2 + 100
    assert len(plan(fine)) == 1
    with pytest.raises(TooLarge) as error:
        plan(fine | {"one-more.txt": b""})
    assert (
        str(error.value)
        == "the zip holds 107 entries; at most 3 images (SR_MAX_ZIP_IMAGES) are accepted"
    )


def test_an_archive_without_images_names_the_kinds_it_reads():
    with pytest.raises(BadInput) as error:
        plan({"metadata.csv": b"id\n"})
    assert (
        str(error.value)
        == "the zip holds no images (.jpg, .jpeg, .png, .webp, .tif, .tiff, .bmp or .gif)"
    )


def test_duplicate_names_differ_only_in_case():
    with pytest.raises(BadInput) as error:
        plan({"d/A.png": png_bytes(), "D/a.png": png_bytes()})
    assert str(error.value) == "the zip holds D/a.png twice; file names must be unique"


def test_a_compression_ratio_is_judged_on_big_members_only():
    small_and_regular = {"a.png": png_bytes(), "metadata.csv": b"a" * (MB - 1 - len(png_bytes()))}
    assert (
        len(
            plan(small_and_regular, Settings(max_zip_ratio=10, max_unzipped_mb=5, max_zip_images=3))
        )
        == 2
    )
    with pytest.raises(TooLarge) as error:
        plan(
            {"a.png": png_bytes(), "zeros.png": bytes(MB)},
            Settings(max_zip_ratio=10, max_unzipped_mb=5, max_zip_images=3),
        )
    assert str(error.value).startswith("zeros.png expands ") and str(error.value).endswith(
        " times (limit 10, SR_MAX_ZIP_RATIO): refused as a zip bomb"
    )


def test_the_unzipped_total_is_inclusive_and_named(tmp_path):
    members = {"a.png": bytes(MB), "b.png": bytes(MB)}
    loose = Settings(max_zip_ratio=1000, max_unzipped_mb=2, max_zip_images=3)
    assert len(plan(members, loose, compression=zipfile.ZIP_STORED)) == 2
    with pytest.raises(TooLarge) as error:
        plan(members | {"c.png": b"x"}, loose, compression=zipfile.ZIP_STORED)
    assert str(error.value) == "the zip expands to 2 MB; the limit is 2 MB (SR_MAX_UNZIPPED_MB)"
    stored = make_zip(members, compression=zipfile.ZIP_STORED)
    extracted = import_zip(stored, tmp_path / "exact", replace(loose, max_upload_mb=3))
    assert sorted(p.stat().st_size for p in extracted.iterdir()) == [MB, MB]  # the last byte fits
    halves = {f"{n}.png": bytes(MB // 2) for n in range(3)}  # each below the per-member check
    with pytest.raises(TooLarge) as error:
        plan(halves, Settings(max_zip_ratio=50, max_unzipped_mb=5, max_zip_images=3))
    assert str(error.value).startswith("the zip expands ") and str(error.value).endswith(
        " times its size (limit 50, SR_MAX_ZIP_RATIO): refused as a zip bomb"
    )


def test_encrypted_members_are_refused_by_name():
    data = bytearray(make_zip({"a.png": png_bytes()}))
    archive = zipfile.ZipFile(io.BytesIO(bytes(data)))
    archive.infolist()[0].flag_bits |= 0x1
    with pytest.raises(BadInput) as error:
        plan_extraction(archive, len(data), CAPS)
    assert str(error.value) == "'a.png' is encrypted; upload an unencrypted zip"


def zip_of_size(size: int) -> bytes:
    """A zip of one image and an incompressible filler (skipped on import), `size` bytes long."""

    def with_filler(count: int) -> bytes:
        members = {"a.png": png_bytes(), "filler.bin": os.urandom(count)}
        return make_zip(members, compression=zipfile.ZIP_STORED)

    data = with_filler(size - len(with_filler(0)))
    assert len(data) == size
    return data


def test_upload_size_is_inclusive_and_the_message_says_what_to_do(tmp_path):
    assert import_zip(zip_of_size(MB), tmp_path / "ok", CAPS).is_dir()
    with pytest.raises(TooLarge) as error:
        import_zip(zip_of_size(MB + MB // 10), tmp_path / "no", CAPS)
    assert str(error.value) == (
        "the upload is 1.1 MB; the limit is 1 MB (SR_MAX_UPLOAD_MB): split the collection into several zips"
    )
    assert not (tmp_path / "no").exists()


def test_a_zip_is_read_from_bytes_a_path_or_an_open_stream(tmp_path):
    data = make_zip({"a.png": png_bytes()})
    (tmp_path / "upload.zip").write_bytes(data)
    assert (import_zip(tmp_path / "upload.zip", tmp_path / "p", CAPS) / "a.png").is_file()
    assert (import_zip(str(tmp_path / "upload.zip"), tmp_path / "s", CAPS) / "a.png").is_file()
    stream = io.BytesIO(data)
    stream.seek(7)  # wherever the caller left it
    assert (import_zip(stream, tmp_path / "b", CAPS) / "a.png").is_file()
    assert not stream.closed  # the caller's stream is the caller's to close
    assert import_zip(io.BytesIO(zip_of_size(MB)), tmp_path / "full", CAPS).is_dir()
    with pytest.raises(TooLarge):
        import_zip(io.BytesIO(zip_of_size(MB + MB // 10)), tmp_path / "over", CAPS)
    with pytest.raises(NotFound) as error:
        import_zip(tmp_path / "missing.zip", tmp_path / "m", CAPS)
    assert str(error.value) == "zip file missing.zip not found"
    with pytest.raises(BadInput) as error:
        import_zip(b"", tmp_path / "e", CAPS)
    assert str(error.value) == "the uploaded zip is empty"


def test_extraction_needs_a_new_or_empty_folder_and_unwraps_one_folder_only(tmp_path):
    data = make_zip({"a.png": png_bytes()})
    (tmp_path / "empty").mkdir()
    assert import_zip(data, tmp_path / "empty", CAPS) == tmp_path / "empty"
    with pytest.raises(BadInput) as error:
        import_zip(data, tmp_path / "empty", CAPS)
    assert str(error.value) == f"{tmp_path / 'empty'} already exists and is not empty"
    assert (tmp_path / "empty" / "a.png").is_file()  # what was there is left alone
    mixed = make_zip({"d/a.png": png_bytes(), "b.png": png_bytes()})
    assert import_zip(mixed, tmp_path / "mixed", CAPS) == tmp_path / "mixed"
    two = make_zip({"d/a.png": png_bytes(), "e/b.png": png_bytes()})
    assert import_zip(two, tmp_path / "two", CAPS) == tmp_path / "two"


def test_unreadable_archives_say_so(tmp_path):
    assert message_of(import_zip, b"PK\x03\x04 broken", tmp_path / "a", CAPS).startswith(
        "the upload is not a readable zip archive ("
    )
    assert not (tmp_path / "a").exists()


# -- collections ----------------------------------------------------------------------------------
@pytest.fixture
def scenes_zip(tmp_path):
    from tests.helpers import make_collection

    return zip_of_folder(make_collection(tmp_path / "scenes"))


def test_a_new_collection_records_its_spec_and_inherits_composed_search(
    tmp_path, micro_backbone, scenes_zip
):
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    like = CollectionSpec(
        name="base", title="Base", index="x", combiner="c-dir", phi="p-dir", vocabulary="heritage"
    )
    composer = object()
    base = Collection(
        like, None, micro_backbone, type("S", (), {"composers": {"combiner": composer}})()
    )
    made = create_collection_from_zip(
        scenes_zip,
        "mine",
        micro_backbone,
        settings,
        title="  " + "T" * 300,
        description=" d " * 1000,
        like=base,
    )
    spec = json.loads((tmp_path / "cache" / "uploads" / "mine" / "collection.json").read_text())
    assert spec["title"] == "T" * 200 and len(spec["description"]) == 2000
    assert (spec["combiner"], spec["phi"], spec["vocabulary"]) == ("c-dir", "p-dir", "heritage")
    assert spec["model"] == micro_backbone.spec and spec["index"] == str(
        tmp_path / "cache" / "uploads" / "mine" / "index"
    )
    assert made.searcher.composers["combiner"] is composer and made.searcher.max_k == settings.max_k
    plain = create_collection_from_zip(scenes_zip, "plain", micro_backbone, settings, title="   ")
    assert plain.spec.title == "plain" and plain.spec.combiner is None
    assert plain.spec.description == "" and plain.index.manifest["index_type"] == "flat"
    assert set(plain.searcher.composers) == {"sum"}
    with pytest.raises(Conflict) as error:
        create_collection_from_zip(scenes_zip, "plain", micro_backbone, settings)
    assert str(error.value) == "a collection named 'plain' already exists; choose another name"


def test_listing_serves_complete_uploads_and_skips_damaged_ones(
    tmp_path, micro_backbone, scenes_zip
):
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    create_collection_from_zip(scenes_zip, "good", micro_backbone, settings)
    root = tmp_path / "cache" / "uploads"
    (root / "bad-json").mkdir()
    (root / "bad-json" / "collection.json").write_text("{not json")
    (root / "bad-fields").mkdir()
    (root / "bad-fields" / "collection.json").write_text(json.dumps({"name": "x"}))
    moved = root / "moved"
    os.rename(root / "good", moved)  # a copied cache: the index is where the spec file is now
    assert [(s.name, s.index) for s in uploaded_specs(settings)] == [("good", str(moved / "index"))]
    assert is_uploaded("moved", settings) and not is_uploaded(
        "bad-json", Settings(cache_dir=str(tmp_path / "elsewhere"))
    )
    assert not is_uploaded("../moved", settings) and not is_uploaded("Moved", settings)
    assert uploaded_specs(Settings(cache_dir=str(tmp_path / "nothing"))) == []


def test_deleting_names_what_it_cannot_delete(tmp_path, micro_backbone, scenes_zip):
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    with pytest.raises(NotFound) as error:
        delete_uploaded_collection("shapes", settings)
    assert str(error.value) == "'shapes' is not an uploaded collection"
    create_collection_from_zip(scenes_zip, "gone", micro_backbone, settings)
    delete_uploaded_collection("gone", settings)
    assert list((tmp_path / "cache" / "uploads").iterdir()) == []


def test_the_sweep_removes_stale_hidden_folders_only(tmp_path):
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    root = tmp_path / "cache" / "uploads"
    for name in (".incoming-old", ".replaced-old", ".incoming-new", "visible-old"):
        (root / name).mkdir(parents=True)
    (root / ".stray-file").write_text("x")
    old = time.time() - 7200
    for name in (".incoming-old", ".replaced-old", "visible-old", ".stray-file"):
        os.utime(root / name, (old, old))
    assert sweep_staging(settings) == [".incoming-old", ".replaced-old"]
    assert sorted(p.name for p in root.iterdir()) == [".incoming-new", ".stray-file", "visible-old"]
    assert sweep_staging(Settings(cache_dir=str(tmp_path / "none"))) == []


def test_the_servers_settings_reach_extraction_and_indexing(tmp_path, micro_backbone, scenes_zip):
    few = Settings(cache_dir=str(tmp_path / "cache"), max_zip_images=7)
    with pytest.raises(TooLarge, match="the zip holds 8 images; the limit is 7"):
        create_collection_from_zip(scenes_zip, "many", micro_backbone, few)
    small = Settings(cache_dir=str(tmp_path / "cache"), thumb_size=16, max_k=7)
    made = create_collection_from_zip(scenes_zip, "small", micro_backbone, small, index_type="hnsw")
    assert made.index.manifest["index_type"] == "hnsw" and made.index.ann is not None
    assert made.searcher.max_k == 7 and made.backbone is micro_backbone
    folder = tmp_path / "cache" / "uploads" / "small"
    assert sorted(p.name for p in folder.iterdir()) == ["collection.json", "images", "index"]
    from PIL import Image

    assert max(Image.open(made.index.thumb_path("red-circle")).size) == 16


# -- what cannot be removed is left, and the call still succeeds -----------------------------------
def undeletable(monkeypatch):
    """Every file removal fails, as on a share that refuses deletes (tests run as root, where
    permissions would not stop it)."""

    def refuse(*args, **kwargs):
        raise PermissionError("injected: removal refused")

    monkeypatch.setattr(os, "unlink", refuse)
    monkeypatch.setattr(os, "rmdir", refuse)


def test_a_replaced_folder_that_cannot_be_removed_does_not_fail_the_swap(tmp_path, monkeypatch):
    target, complete = tmp_path / "mine", tmp_path / ".incoming-x"
    for folder, text in ((target, "old"), (complete, "new")):
        folder.mkdir()
        (folder / "f.txt").write_text(text)
    undeletable(monkeypatch)
    replace_folder(complete, target)
    assert (target / "f.txt").read_text() == "new" and not complete.exists()
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".replaced-")]
    assert len(left) == 1  # hidden: never served, and swept when the server next starts
    monkeypatch.undo()
    replaced = tmp_path / ".incoming-z"
    replaced.mkdir()
    replace_folder(replaced, target)  # removable now: nothing of the old folder is left
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".replaced-")]) == 1
    first = tmp_path / ".incoming-y"
    first.mkdir()
    replace_folder(first, tmp_path / "fresh")  # nothing to replace: no error either
    assert (tmp_path / "fresh").is_dir()


def test_a_stale_folder_or_deleted_collection_that_cannot_be_removed_is_no_error(
    tmp_path, monkeypatch, micro_backbone, scenes_zip
):
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    create_collection_from_zip(scenes_zip, "gone", micro_backbone, settings)
    stale = tmp_path / "cache" / "uploads" / ".incoming-old"
    stale.mkdir()
    (stale / "f.txt").write_text("x")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    undeletable(monkeypatch)
    assert sweep_staging(settings) == [".incoming-old"]
    delete_uploaded_collection("gone", settings)
    assert not is_uploaded("gone", settings)  # the name is free even though files remain
