"""The Hugging Face Hub: publish index directories (and model artifacts) and fetch them back.

A location is either a local path or `hf-hub:org/repo[@revision]` (a dataset repo for indexes,
a model repo for weights). Fetched files land in the huggingface_hub cache, so a second start
works offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from retrieval.errors import NotFound, RetrievalError

HUB_PREFIX = "hf-hub:"


class HubUnavailable(RetrievalError):
    status_code = 503


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
        raise HubUnavailable(
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


def push(
    folder: str | Path,
    repo: str,
    repo_type: str = "dataset",
    token: str | None = None,
    private: bool = False,
    allow_patterns: list[str] | None = None,
) -> str:
    """Create the repo if needed and upload the folder in one commit; returns the commit URL.

    Without `token`, huggingface_hub uses its own (HF_TOKEN or the saved login).
    """
    repo = repo.removeprefix(HUB_PREFIX)
    api = HfApi(token=token)
    api.create_repo(repo, repo_type=repo_type, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo,
        folder_path=str(folder),
        repo_type=repo_type,
        allow_patterns=allow_patterns,
        commit_message="Upload from Smart Retrieval",
    )
    return str(getattr(info, "commit_url", info))


def push_index(
    index_dir: str | Path, repo: str, token: str | None = None, private: bool = False
) -> str:
    index_dir = Path(index_dir)
    if not (index_dir / "CURRENT").is_file():
        raise NotFound(f"{index_dir} is not an index directory")
    return push(index_dir, repo, "dataset", token, private, allow_patterns=index_files(index_dir))
