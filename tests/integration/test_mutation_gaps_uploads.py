"""Upload rules that mutation testing found unpinned: folder entries, names that only look alike,
the zip-bomb ratios at their edges and in their messages, and what a failed extraction leaves.
Each test fails for one surviving mutant of retrieval/uploads.py (bench/mutation_survivors.toml
names which)."""

from __future__ import annotations

import io
import zipfile
from pathlib import PurePosixPath

import pytest

from retrieval.config import Settings
from retrieval.errors import BadInput, TooLarge
from retrieval.uploads import MB, MIN_RATIO_CHECK_BYTES, import_zip, member_path, plan_extraction
from tests.integration.test_uploads import files_under, make_zip, png_bytes

LOOSE = Settings(max_upload_mb=5, max_zip_images=5, max_zip_ratio=10, max_unzipped_mb=5, cache_dir="unused")  # fmt: skip


def zip_with_entries(names: list[str]) -> bytes:
    """Entries in this order; names ending in a separator are empty folder entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            archive.writestr(name, b"" if name.endswith(("/", "\\")) else png_bytes())
    return buffer.getvalue()


def refusal(error_type, call, *args) -> str:
    with pytest.raises(error_type) as error:
        call(*args)
    return str(error.value)


# -- folder entries and names ---------------------------------------------------------------------
def test_folder_entries_before_the_images_do_not_hide_them(tmp_path):
    data = zip_with_entries(["photos/", "photos/a.png", "photos/old/", "photos/old/b.png"])
    root = import_zip(data, tmp_path / "out", LOOSE)
    assert files_under(tmp_path / "out") == {"photos/a.png", "photos/old/b.png"}
    assert root == tmp_path / "out" / "photos"


@pytest.mark.parametrize("separator", ["/", "\\"])
def test_a_folder_named_like_an_image_is_a_folder(tmp_path, separator):
    data = zip_with_entries([f"shots.png{separator}", f"shots.png{separator}a.png"])
    import_zip(data, tmp_path / "out", LOOSE)
    assert files_under(tmp_path / "out") == {"shots.png/a.png"}


def test_names_equal_only_when_upper_cased_are_different_files(tmp_path):
    data = make_zip({"straße.png": png_bytes(), "strasse.png": png_bytes()})
    import_zip(data, tmp_path / "out", LOOSE)
    assert files_under(tmp_path / "out") == {"straße.png", "strasse.png"}


def test_spaces_are_allowed_in_member_names():
    assert member_path("my photos/a view.png") == PurePosixPath("my photos/a view.png")


def test_a_too_long_name_is_quoted_to_its_first_60_characters():
    name = "abcdefghij" * 30 + ".png"
    assert refusal(BadInput, member_path, name) == (
        f"the zip holds a file name longer than 255 bytes ({name[:60]!r}...)"
    )


# -- zip-bomb ratios ------------------------------------------------------------------------------
def plan_of(
    members: dict[str, bytes], settings: Settings, archive_size: int | None = None, **options
):
    data = make_zip(members, **options)
    archive = zipfile.ZipFile(io.BytesIO(data))
    return plan_extraction(archive, archive_size or len(data), settings)


def test_a_member_expanding_exactly_the_allowed_ratio_is_accepted():
    stored = {"a.png": bytes(MB)}  # stored: it expands exactly 1 time
    settings = Settings(max_zip_ratio=1, max_unzipped_mb=5)
    assert len(plan_of(stored, settings, compression=zipfile.ZIP_STORED)) == 1


def test_the_total_ratio_is_checked_from_exactly_one_mb_and_accepts_exactly_the_limit():
    half = bytes(MIN_RATIO_CHECK_BYTES // 2)
    halves = {"a.png": half, "b.png": half}
    message = refusal(TooLarge, plan_of, halves, LOOSE, 1024)  # 1 MB from a 1 KiB archive
    assert message == (
        "the zip expands 1024 times its size (limit 10, SR_MAX_ZIP_RATIO): refused as a zip bomb"
    )
    edge = {"a.png": bytes(524_290), "b.png": bytes(524_290)}  # 1,048,580 bytes in all
    assert len(plan_of(edge, LOOSE, 104_858)) == 2  # exactly 10 times the archive: allowed


def test_a_members_ratio_is_named_and_judged_on_at_least_one_compressed_byte():
    data = make_zip({"zeros.png": bytes(2 * MB)})
    info = zipfile.ZipFile(io.BytesIO(data)).infolist()[0]
    expected = f"zeros.png expands {info.file_size / info.compress_size:.0f} times (limit 10"
    assert refusal(TooLarge, plan_of, {"zeros.png": bytes(2 * MB)}, LOOSE).startswith(expected)
    lying = zipfile.ZipFile(io.BytesIO(make_zip({"a.png": png_bytes()})))
    header = lying.infolist()[0]
    header.file_size, header.compress_size = 2 * MB, 1  # a header claiming 1 compressed byte
    settings = Settings(max_zip_ratio=1_500_000, max_unzipped_mb=5, max_zip_images=3)
    message = refusal(TooLarge, plan_extraction, lying, 10 * MB, settings)
    assert message.startswith("a.png expands 2097152 times (limit 1500000")


# -- what a failed extraction leaves --------------------------------------------------------------
def test_a_file_and_a_folder_of_one_name_are_refused_and_nothing_is_left(tmp_path):
    data = make_zip({"photo.png": png_bytes(), "photo.png/inner.png": png_bytes()})
    message = refusal(BadInput, import_zip, data, tmp_path / "out", LOOSE)
    assert message == "the zip holds photo.png twice"
    assert not (tmp_path / "out").exists()


def test_a_path_too_long_for_the_disk_is_refused_and_nothing_is_left(tmp_path):
    deep = "/".join(["d" * 200] * 25) + "/a.png"  # each part fits; the whole path does not
    data = make_zip({"ok.png": png_bytes(), deep: png_bytes()})
    message = refusal(BadInput, import_zip, data, tmp_path / "out", LOOSE)
    assert message.startswith("the zip could not be extracted (") and "too long" in message
    assert not (tmp_path / "out").exists()
