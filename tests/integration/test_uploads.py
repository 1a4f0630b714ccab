"""Zip import: hostile archives are refused with a clear message; good ones become collections."""

import io
import os
import shutil
import stat
import time
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval.catalog import Catalog
from retrieval.config import Settings
from retrieval.errors import BadInput, Conflict, NotFound, TooLarge
from retrieval.uploads import (
    create_collection_from_zip,
    delete_uploaded_collection,
    import_zip,
    is_uploaded,
    member_path,
    sweep_staging,
    uploaded_specs,
)
from tests.helpers import draw_scene, make_collection
from webapp.api import create_api


def png_bytes(colour="red", shape="circle") -> bytes:
    buffer = io.BytesIO()
    draw_scene(colour, shape, size=32).save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_of_folder(folder: Path, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
    return buffer.getvalue()


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


SMALL = Settings(
    max_upload_mb=1, max_zip_images=5, max_zip_ratio=20, max_unzipped_mb=2, cache_dir="unused"
)


def test_good_zip_keeps_images_and_metadata_and_skips_the_rest(tmp_path):
    data = make_zip(
        {
            "a.png": png_bytes(),
            "sub/b.png": png_bytes("blue"),
            "metadata.csv": b"id,file,title\nx,a.png,Alpha\n",
            "readme.txt": b"ignored",
            "run.py": b"import os",
            "model.pkl": b"\x80\x04",
            ".hidden.png": png_bytes(),
            "__MACOSX/._a.png": b"junk",
        }
    )
    folder = import_zip(data, tmp_path / "out", SMALL)
    assert files_under(folder) == {"a.png", "sub/b.png", "metadata.csv"}


def test_one_top_level_folder_is_unwrapped(tmp_path):
    data = make_zip({"museum/a.png": png_bytes(), "museum/metadata.csv": b"id,file\na,a.png\n"})
    folder = import_zip(data, tmp_path / "out", SMALL)
    assert folder.name == "museum" and files_under(folder) == {"a.png", "metadata.csv"}


@pytest.mark.parametrize(
    "name, message",
    [
        ("../evil.png", "leaving its folder"),
        ("a/../../evil.png", "leaving its folder"),
        ("/etc/evil.png", "absolute path"),
        ("C:/Windows/evil.png", "absolute path"),
        ("..\\evil.png", "leaving its folder"),
        ("bad\x01name.png", "control characters"),
    ],
)
def test_unsafe_member_names_are_refused_and_nothing_is_written(tmp_path, name, message):
    data = make_zip({"ok.png": png_bytes(), name: png_bytes()})
    with pytest.raises(BadInput, match=message):
        import_zip(data, tmp_path / "out" / "images", SMALL)
    assert not (tmp_path / "out" / "images").exists()
    assert not list(tmp_path.rglob("evil.png"))


def test_symlink_members_are_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ok.png", png_bytes())
        link = zipfile.ZipInfo("link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(BadInput, match="symbolic link"):
        import_zip(buffer.getvalue(), tmp_path / "out", SMALL)


def test_duplicate_names_are_refused(tmp_path):
    data = make_zip({"A.png": png_bytes(), "a.PNG": png_bytes()})
    with pytest.raises(BadInput, match="twice"):
        import_zip(data, tmp_path / "out", SMALL)


def test_zip_bomb_by_ratio_and_by_total_size(tmp_path):
    bomb = make_zip({"a.png": png_bytes(), "zeros.png": b"\0" * (3 * 1024 * 1024)})
    with pytest.raises(TooLarge, match="zip bomb|expands"):
        import_zip(bomb, tmp_path / "out", SMALL)
    stored = make_zip(
        {f"{i}.png": bytes(700 * 1024) for i in range(4)}, compression=zipfile.ZIP_STORED
    )
    loose = Settings(max_upload_mb=10, max_unzipped_mb=2, max_zip_ratio=100, max_zip_images=5)
    with pytest.raises(TooLarge, match="SR_MAX_UNZIPPED_MB"):
        import_zip(stored, tmp_path / "out2", loose)


def test_a_member_that_lies_about_its_size_is_cut_off(tmp_path):
    data = bytearray(make_zip({"a.png": b"\0" * 300_000}))
    honest = zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[0]
    # Shrink the declared size in the local header and the central directory.
    old, new = honest.file_size.to_bytes(4, "little"), (1000).to_bytes(4, "little")
    assert data.count(old) >= 2
    data = data.replace(old, new)
    with pytest.raises(BadInput):
        import_zip(bytes(data), tmp_path / "out", SMALL)
    assert not (tmp_path / "out").exists()


def test_count_and_upload_size_caps(tmp_path):
    many = make_zip({f"{i}.png": png_bytes() for i in range(6)})
    with pytest.raises(TooLarge, match="SR_MAX_ZIP_IMAGES"):
        import_zip(many, tmp_path / "a", SMALL)
    with pytest.raises(TooLarge, match="SR_MAX_UPLOAD_MB"):
        import_zip(b"PK" + bytes(2 * 1024 * 1024), tmp_path / "b", SMALL)


def test_not_a_zip_empty_zip_and_no_images(tmp_path):
    with pytest.raises(BadInput, match="not a readable zip"):
        import_zip(b"this is plain text", tmp_path / "a", SMALL)
    with pytest.raises(BadInput, match="empty"):
        import_zip(b"", tmp_path / "b", SMALL)
    with pytest.raises(BadInput, match="no images"):
        import_zip(make_zip({"notes.txt": b"hello"}), tmp_path / "c", SMALL)
    with pytest.raises(NotFound):
        import_zip(tmp_path / "missing.zip", tmp_path / "d", SMALL)


def test_member_path_rules():
    assert member_path("dir/./x.JPG").as_posix() == "dir/x.JPG"
    assert member_path("dir\\x.png").as_posix() == "dir/x.png"
    assert member_path("x.exe") is None and member_path(".git/x.png") is None


def test_create_collection_from_zip_then_search_list_and_delete(tmp_path, micro_backbone):
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    data = zip_of_folder(make_collection(tmp_path / "src"), prefix="paintings/")
    collection = create_collection_from_zip(
        data, "my-museum", micro_backbone, settings, title="My museum"
    )
    assert len(collection.index) == 8 and collection.spec.title == "My museum"
    assert collection.index.item("red-circle")["artist"] == "Bruno"  # metadata.csv was used
    hits = collection.searcher.similar("red-circle", k=3).hits
    assert len(hits) == 3 and "red-circle" not in {hit.id for hit in hits}
    assert [spec.name for spec in uploaded_specs(settings)] == ["my-museum"]
    assert is_uploaded("my-museum", settings)
    with pytest.raises(Conflict, match="already exists"):
        create_collection_from_zip(data, "my-museum", micro_backbone, settings)
    delete_uploaded_collection("my-museum", settings)
    assert not is_uploaded("my-museum", settings) and uploaded_specs(settings) == []


def test_failed_upload_leaves_no_staging_folder(tmp_path, micro_backbone):
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    broken = make_zip({"a.png": b"not really a png"})
    with pytest.raises(BadInput, match="could be read"):
        create_collection_from_zip(broken, "broken", micro_backbone, settings)
    with pytest.raises(BadInput, match="not allowed"):
        create_collection_from_zip(broken, "../escape", micro_backbone, settings)
    assert list((tmp_path / "cache" / "uploads").iterdir()) == []


def test_crash_leftovers_are_never_served_and_swept_at_startup(tmp_path, micro_backbone):
    """A crash between writing collection.json and the final rename left a complete-looking
    hidden folder: it must not be served, and the server's start removes it once it is stale."""
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    data = zip_of_folder(make_collection(tmp_path / "src"))
    create_collection_from_zip(data, "kept", micro_backbone, settings)
    root = tmp_path / "cache" / "uploads"
    crashed, in_progress = root / ".incoming-crashed", root / ".incoming-now"
    shutil.copytree(root / "kept", crashed)
    in_progress.mkdir()
    an_hour_and_more = time.time() - 2 * 3600
    os.utime(crashed, (an_hour_and_more, an_hour_and_more))
    assert [spec.name for spec in uploaded_specs(settings)] == ["kept"]
    client = TestClient(create_api(Catalog([], settings), settings))
    assert [c["name"] for c in client.get("/api/collections").json()["collections"]] == ["kept"]
    assert not crashed.exists() and in_progress.is_dir()  # a live upload is left alone
    assert sweep_staging(settings, older_than_s=0) == [".incoming-now"]


VALID_ZIP = make_zip(
    {"a.png": png_bytes(), "d/b.png": png_bytes("blue"), "metadata.csv": b"id,file\na,a.png\n"}
)


def _import_is_safe(data: bytes, out: Path) -> None:
    try:
        folder = import_zip(data, out, SMALL)
    except BadInput:  # TooLarge is a BadInput too
        assert not out.exists()
        return
    assert folder.resolve().is_relative_to(out.resolve())
    for path in out.rglob("*"):
        assert not path.is_symlink() and path.resolve().is_relative_to(out.resolve())


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cut=st.integers(min_value=0, max_value=len(VALID_ZIP) - 1),
    flips=st.lists(st.tuples(st.integers(0, len(VALID_ZIP) - 1), st.integers(0, 255)), max_size=6),
)
def test_fuzz_mutated_zips_extract_safely_or_raise_bad_input(tmp_path, cut, flips):
    data = bytearray(VALID_ZIP[: len(VALID_ZIP) - cut])
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    out = tmp_path / f"out-{abs(hash((cut, tuple(flips))))}"
    _import_is_safe(bytes(data), out)


name_parts = st.lists(
    st.sampled_from(["a", "b", ".", "/", "\\", ":", "_", "..", "C:", "\x00", "é", "__MACOSX"]),
    max_size=8,
).map("".join)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(names=st.lists(name_parts.map(lambda n: n + ".png"), min_size=1, max_size=4))
def test_fuzz_member_names_never_escape(tmp_path, names):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(zipfile.ZipInfo(name), png_bytes())
    out = tmp_path / f"names-{abs(hash(tuple(names)))}"
    _import_is_safe(buffer.getvalue(), out)
