"""A stand-in for the Hugging Face Hub's API (the network is off in tests): it keeps each repo's
files in memory, answers `list_repo_tree` with huggingface_hub's own `RepoFile` entries (git blob
ids for small text files, LFS sha256 for binaries, as the Hub does) and records every call, so the
code deciding what to upload runs for real against it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete
from huggingface_hub.hf_api import RepoFile

LFS_SUFFIXES = (".npy", ".faiss", ".safetensors", ".jpg", ".png")


class FakeHubApi:
    def __init__(self, fail_on_commit: int | None = None):
        self.repos: dict[tuple[str, str], dict[str, bytes]] = {}
        self.calls: list[tuple[str, str]] = []
        self.commits: list[dict] = []  # {"repo", "added", "deleted"} per commit that went through
        self.fail_on_commit = fail_on_commit  # the n-th create_commit call (1-based) breaks
        self._commit_calls = 0

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **_):
        self.calls.append(("create_repo", repo_id))
        self.repos.setdefault((repo_type or "model", repo_id), {".gitattributes": b"*.npy lfs\n"})
        return f"https://hub.example/{repo_type}s/{repo_id}"

    def list_repo_tree(self, repo_id, *, recursive=False, repo_type=None, **_):
        self.calls.append(("list_repo_tree", repo_id))
        files = self.repos[(repo_type or "model", repo_id)]
        return [_entry(path, data) for path, data in sorted(files.items())]

    def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, **_):
        self.calls.append(("create_commit", repo_id))
        self._commit_calls += 1
        if self._commit_calls == self.fail_on_commit:
            raise ConnectionError("connection reset by peer")
        files = self.repos[(repo_type or "model", repo_id)]
        added, deleted = [], []
        for operation in operations:
            if isinstance(operation, CommitOperationAdd):
                files[operation.path_in_repo] = Path(operation.path_or_fileobj).read_bytes()
                added.append(operation.path_in_repo)
            elif isinstance(operation, CommitOperationDelete):
                files.pop(operation.path_in_repo)
                deleted.append(operation.path_in_repo)
        self.commits.append({"repo": repo_id, "added": added, "deleted": deleted})
        url = f"https://hub.example/{repo_id}/commit/{len(self.commits):040d}"
        return type("CommitInfo", (), {"commit_url": url})()

    def uploaded(self, repo_id: str | None = None) -> list[str]:
        """Every file path added by a commit (to `repo_id`), in order."""
        return [p for c in self.commits if repo_id in (None, c["repo"]) for p in c["added"]]

    def files(self, repo_id: str, repo_type: str = "dataset") -> dict[str, bytes]:
        return self.repos[(repo_type, repo_id)]

    def snapshot_into(self, cache_dir: Path, repo_id: str, repo_type: str = "dataset") -> None:
        """Write the repo as huggingface_hub's cache holds a download, so `fetch` finds it offline."""
        commit = hashlib.sha1(repr(sorted(self.files(repo_id, repo_type))).encode()).hexdigest()
        repo_cache = Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}"
        for path, data in self.files(repo_id, repo_type).items():
            target = repo_cache / "snapshots" / commit / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (repo_cache / "refs").mkdir(parents=True, exist_ok=True)
        (repo_cache / "refs" / "main").write_text(commit)


def _git_blob(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def _entry(path: str, data: bytes) -> RepoFile:
    """An LFS file's git blob is its pointer, so only its LFS sha256 names the content."""
    if not path.endswith(LFS_SUFFIXES):
        return RepoFile(path=path, size=len(data), oid=_git_blob(data))
    sha256 = hashlib.sha256(data).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
    lfs = {"size": len(data), "oid": sha256, "pointerSize": len(pointer)}
    return RepoFile(path=path, size=len(data), oid=_git_blob(pointer.encode()), lfs=lfs)
