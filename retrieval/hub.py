"""The Hugging Face Hub: publish index directories (and model artifacts) and fetch them back.

A location is either a local path or `hf-hub:org/repo[@revision]` (a dataset repo for indexes,
a model repo for weights). Fetched files land in the huggingface_hub cache, so a second start
works offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from retrieval.errors import NotFound, RetrievalError

HUB_PREFIX = "hf-hub:"


class HubUnavailable(RetrievalError):
    status_code = 503


class NotCached(HubUnavailable):
    """A Hub location with no copy in the local cache, and no network to download it."""


def is_hub_location(location: str) -> bool:
    return str(location).startswith(HUB_PREFIX)


def parse_hub_location(location: str) -> tuple[str, str | None]:
    repo, _, revision = location.removeprefix(HUB_PREFIX).partition("@")
    if repo.count("/") != 1:
        raise NotFound(f"{location!r}: a Hub location looks like hf-hub:org/repo[@revision]")
    return repo, revision or None


def fetch(location: str | Path, repo_type: str = "dataset", cache_dir: str | None = None) -> Path:
    """A local folder for `location`, downloading (or reusing the cache) for Hub locations."""
    if not is_hub_location(str(location)):
        path = Path(location).expanduser()
        if not path.exists():
            raise NotFound(f"{path} does not exist")
        return path
    repo, revision = parse_hub_location(str(location))
    try:
        return Path(
            snapshot_download(repo, repo_type=repo_type, revision=revision, cache_dir=cache_dir)
        )
    except LocalEntryNotFoundError as error:
        raise NotCached(
            f"{location} is not in the local cache and the Hub cannot be reached (offline or no network); "
            "download it once with network access, or use a local copy"
        ) from error
    except (HfHubHTTPError, OSError) as error:
        raise HubUnavailable(f"could not download {location}: {error}") from error


def index_files(index_dir: Path) -> list[str]:
    """Only the live version and the thumbnails it uses: old versions stay local."""
    current = (index_dir / "CURRENT").read_text().strip()
    version = index_dir / "versions" / current
    files = ["CURRENT"] + [f"versions/{current}/{p.name}" for p in version.iterdir() if p.is_file()]
    with open(version / "items.jsonl", encoding="utf-8") as handle:
        thumbs = {json.loads(line)["thumb"] for line in handle if line.strip()}
    return files + [f"thumbs/{name}" for name in sorted(thumbs)]


COMMIT_FILES = 1000  # files per commit: an interrupted push keeps every commit it finished
COMMIT_BYTES = 1 << 30
LAST_FILES = ("CURRENT", "README.md")  # go in the final commit: never point at files not yet there


@dataclass
class PushResult:
    """What one push did: the files it uploaded and deleted, and the commits that did it."""

    repo: str
    url: str
    uploaded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if not self.commits:
            return f"{self.url} is up to date: nothing to upload"
        return self.commits[-1]


def file_hashes(path: Path) -> tuple[str, str]:
    """(git blob sha1, sha256) of a file: the Hub names a regular file by the first and an LFS
    file by the second, so either can be compared with the remote listing."""
    blob, sha256 = hashlib.sha1(f"blob {path.stat().st_size}\0".encode()), hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            blob.update(chunk)
            sha256.update(chunk)
    return blob.hexdigest(), sha256.hexdigest()


def remote_files(api: HfApi, repo: str, repo_type: str) -> dict:
    """path -> the Hub's file entry (size, git blob id, LFS sha256) for every file in the repo."""
    try:
        entries = api.list_repo_tree(repo, recursive=True, repo_type=repo_type)
        return {entry.path: entry for entry in entries if hasattr(entry, "blob_id")}
    except (RepositoryNotFoundError, EntryNotFoundError):
        return {}


def is_uploaded(path: Path, remote) -> bool:
    """True when the remote file has this file's content (size first, hashes only when needed)."""
    if remote is None or remote.size != path.stat().st_size:
        return False
    blob, sha256 = file_hashes(path)
    lfs = getattr(remote, "lfs", None)
    return (lfs.sha256 == sha256) if lfs else remote.blob_id == blob


def commit_batches(folder: Path, files: list[str], max_files: int, max_bytes: int) -> list[list]:
    """Files grouped into commits of bounded size, LAST_FILES alone in the final one."""
    last = [name for name in files if name in LAST_FILES]
    batches, batch, size = [], [], 0
    for name in (name for name in files if name not in LAST_FILES):
        file_size = (folder / name).stat().st_size
        if batch and (len(batch) >= max_files or size + file_size > max_bytes):
            batches.append(batch)
            batch, size = [], 0
        batch.append(name)
        size += file_size
    return [b for b in [*batches, batch, last] if b]


def push(
    folder: str | Path,
    repo: str,
    repo_type: str = "dataset",
    token: str | None = None,
    private: bool = False,
    files: list[str] | None = None,
    prune: tuple[str, ...] = (),
    api: HfApi | None = None,
    max_files: int = COMMIT_FILES,
    max_bytes: int = COMMIT_BYTES,
) -> PushResult:
    """Create the repo if needed and upload what the Hub does not already hold, in commits of
    bounded size, so a second push of the same folder uploads nothing and an interrupted one
    resumes with only the missing files. Remote files under a `prune` prefix that are not among
    `files` (default: every file in the folder) are deleted in the final commit.

    Without `token`, huggingface_hub uses its own (HF_TOKEN or the saved login).
    """
    folder, repo = Path(folder), repo.removeprefix(HUB_PREFIX)
    files = files if files is not None else _all_files(folder)
    api = api or HfApi(token=token)
    try:
        url = str(api.create_repo(repo, repo_type=repo_type, private=private, exist_ok=True))
        remote = remote_files(api, repo, repo_type)
    except (HfHubHTTPError, OSError) as error:  # no token, no rights, offline
        raise HubUnavailable(
            f"cannot reach {repo} on the Hub ({error}); check the network and the token "
            "(HF_TOKEN or `hf auth login`)"
        ) from error
    todo = [name for name in files if not is_uploaded(folder / name, remote.get(name))]
    kept = set(files)
    stale = sorted(p for p in remote if prune and p.startswith(prune) and p not in kept)
    result = PushResult(repo, url)
    batches = commit_batches(folder, todo, max_files, max_bytes) or ([[]] if stale else [])
    for number, batch in enumerate(batches, start=1):
        operations = [CommitOperationAdd(name, str(folder / name)) for name in batch]
        if number == len(batches):
            operations += [CommitOperationDelete(name) for name in stale]
        try:
            info = api.create_commit(
                repo, operations, repo_type=repo_type,
                commit_message=f"Upload from Smart Retrieval ({number}/{len(batches)})",
            )  # fmt: skip
        except Exception as error:  # network, HTTP, quota: all resumable by pushing again
            raise HubUnavailable(
                f"push to {repo} stopped at commit {number} of {len(batches)} ({error}); run the "
                "same command again: it uploads only what the Hub does not hold yet"
            ) from error
        result.commits.append(str(getattr(info, "commit_url", info)))
        result.uploaded += batch
    result.deleted = stale
    return result


def _all_files(folder: Path) -> list[str]:
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not path.name.startswith(".")
    )


def push_index(
    index_dir: str | Path,
    repo: str,
    token: str | None = None,
    private: bool = False,
    api: HfApi | None = None,
) -> PushResult:
    """The live version, its thumbnails and a dataset card (README.md) when there is one; files
    of older versions and thumbnails no item uses any more are removed from the repo."""
    index_dir = Path(index_dir)
    if not (index_dir / "CURRENT").is_file():
        raise NotFound(f"{index_dir} is not an index directory")
    files = index_files(index_dir) + (["README.md"] if (index_dir / "README.md").is_file() else [])
    return push(
        index_dir, repo, "dataset", token, private, files, prune=("versions/", "thumbs/"), api=api
    )
