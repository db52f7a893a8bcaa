"""The catalog of RWKV model files on the Hub: a short list of repositories (catalog.json beside
this file, extended by `catalog.json` in the app's data directory), whose files are listed at run
time through the Hub's API, with each file's size and SHA-256 (its LFS metadata). No streamlit.

    cat = load_catalog()                        # the repositories, and a few files known offline
    listing = lookup(cat, "https://huggingface.co")   # asks the Hub (only when the user asks)
    for label, files in group_files(listing.files): ...   # "0.1B" ... "13.3B", newest first
    ref = parse_reference("https://huggingface.co/BlinkDL/rwkv7-g1/blob/main/x.pth")

A user's catalog.json has the bundled file's form: {"repositories": [{"repo": "owner/name",
"note": "..."}], "known_files": [{"repo": ..., "path": ..., "size": ..., "sha256": ...}]}; its
repositories come first. The last listing is kept in the data directory
(`model-catalog-cache.json`, private) so that Home can recommend a file without the network.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from core.config import write_atomic
from core.errors import ModelError
from core.models.hub import METADATA_TIMEOUT_S, HubError, explain, is_official, token_for
from core.models.names import NameInfo, parse

BUNDLED = Path(__file__).with_name("catalog.json")
USER_FILE = "catalog.json"  # in the data directory
CACHE_FILE = "model-catalog-cache.json"  # in the data directory
MODEL_SUFFIXES = (".pth", ".gguf")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_MAX_USER_FILE = 1_000_000  # bytes: a catalog, not a data dump


@dataclass(frozen=True)
class HubFile:
    """A model file in a Hub repository. `endpoint` None: wherever the setting points (a pasted
    address on another host keeps its own)."""

    repo: str
    path: str
    size: int | None = None
    sha256: str | None = None
    revision: str = "main"
    endpoint: str | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def info(self) -> NameInfo:
        return parse(self.name).with_repo(self.repo)

    @property
    def ref(self) -> str:
        """ "owner/name/path", what `python -m core.models get` takes."""
        return f"{self.repo}/{self.path}"

    @property
    def key(self) -> str:
        """A short stable id (widget keys)."""
        text = f"{self.endpoint or ''}|{self.repo}|{self.revision}|{self.path}"
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "main")}

    @classmethod
    def from_dict(cls, d: object) -> HubFile:
        if not isinstance(d, dict):
            raise ValueError("not an object")
        repo, path = d.get("repo"), d.get("path")
        if not isinstance(repo, str) or not _REPO_ID.fullmatch(repo):
            raise ValueError(f"not a repository id: {repo!r}")
        if not isinstance(path, str) or not path or path.startswith("/") or ".." in path:
            raise ValueError(f"not a file path: {path!r}")
        size, sha = d.get("size"), d.get("sha256")
        return cls(
            repo=repo,
            path=path,
            size=size
            if isinstance(size, int) and not isinstance(size, bool) and size > 0
            else None,
            sha256=sha.lower()
            if isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha)
            else None,
            revision=str(d.get("revision") or "main"),
            endpoint=str(d["endpoint"]) if d.get("endpoint") else None,
        )


@dataclass(frozen=True)
class RepoEntry:
    repo: str
    note: str = ""


@dataclass(frozen=True)
class Catalog:
    repositories: tuple[RepoEntry, ...]
    known_files: tuple[HubFile, ...] = ()
    problems: tuple[str, ...] = ()  # why a user's catalog.json (or an entry) was not used


def _read_catalog(path: Path) -> tuple[list[RepoEntry], list[HubFile], list[str]]:
    problems: list[str] = []
    try:
        if path.stat().st_size > _MAX_USER_FILE:
            return [], [], [f"{path} is larger than {_MAX_USER_FILE // 1000} kB: not read."]
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [], [], []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return [], [], [f"{path} cannot be read ({e}); the bundled catalog is used."]
    if not isinstance(data, dict):
        return [], [], [f"{path} is not a JSON object; the bundled catalog is used."]
    repos: list[RepoEntry] = []
    for item in data.get("repositories") or []:
        repo = item.get("repo") if isinstance(item, dict) else item
        if isinstance(repo, str) and _REPO_ID.fullmatch(repo.strip()):
            note = item.get("note", "") if isinstance(item, dict) else ""
            repos.append(RepoEntry(repo.strip(), str(note or "")))
        else:
            problems.append(f"{path}: {repo!r} is not a repository id (owner/name); skipped.")
    files: list[HubFile] = []
    for item in data.get("known_files") or []:
        try:
            files.append(HubFile.from_dict(item))
        except ValueError as e:
            problems.append(f"{path}: a known file was skipped ({e}).")
    return repos, files, problems


def load_catalog(data: Path | None = None) -> Catalog:
    """The bundled catalog, extended by `catalog.json` in `data` (default: the data
    directory). A user file that cannot be read is named in `problems`, never raised."""
    from core.config import data_dir

    repos, files, _ = _read_catalog(BUNDLED)
    user_repos, user_files, problems = _read_catalog((data or data_dir()) / USER_FILE)
    seen: set[str] = set()
    merged: list[RepoEntry] = []
    for entry in [*user_repos, *repos]:
        if entry.repo.lower() not in seen:
            seen.add(entry.repo.lower())
            merged.append(entry)
    return Catalog(tuple(merged), tuple([*user_files, *files]), tuple(problems))


# --------------------------------------------------------------------------- listing the Hub
@dataclass
class RepoListing:
    repo: str
    files: list[HubFile] = field(default_factory=list)
    error: str | None = None
    offline: bool = False


@dataclass
class Listing:
    """What the Hub said about the catalog's repositories, when."""

    endpoint: str
    repos: list[RepoListing]
    fetched_at: float = field(default_factory=time.time)

    @property
    def files(self) -> list[HubFile]:
        return [f for r in self.repos for f in r.files]

    @property
    def offline(self) -> bool:
        """Nothing could be reached (no network, a wrong address, HF_HUB_OFFLINE)."""
        return bool(self.repos) and all(r.offline for r in self.repos)

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.repos if r.error]


def _is_model_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    low = name.lower()
    return (
        low.endswith(MODEL_SUFFIXES)
        and not name.startswith(".")
        and not any(w in low for w in ("mmproj", "imatrix"))
    )


def list_repo(
    repo: str,
    endpoint: str,
    revision: str = "main",
    timeout: float = METADATA_TIMEOUT_S,
    file_endpoint: str | None = None,
) -> RepoListing:
    """The model files (.pth, .gguf) of `repo` at `revision` on `endpoint`, with their size and
    SHA-256 (the API's LFS metadata). Never raises: a failure is the listing's `error`."""
    from huggingface_hub import HfApi

    try:
        api = HfApi(endpoint=endpoint, token=token_for(endpoint))
        info = api.model_info(repo, revision=revision, files_metadata=True, timeout=timeout)
    except Exception as e:  # the library's and its HTTP client's errors, said in words
        err = explain(e, endpoint, f"repository {repo}")
        return RepoListing(repo, error=str(err), offline=err.offline)
    files = []
    for s in info.siblings or []:
        if not _is_model_file(s.rfilename):
            continue
        lfs = s.lfs
        files.append(
            HubFile(
                repo=repo,
                path=s.rfilename,
                size=(lfs.size if lfs is not None else None) or s.size,
                sha256=lfs.sha256.lower() if lfs is not None and lfs.sha256 else None,
                revision=revision,
                endpoint=file_endpoint,
            )
        )
    return RepoListing(repo, files)


def lookup(
    catalog: Catalog, endpoint: str, timeout: float = METADATA_TIMEOUT_S, workers: int = 4
) -> Listing:
    """List every repository of the catalog on `endpoint` (the first alone, then the rest a
    few at a time). Never raises. When the first cannot reach the endpoint at all, the others
    are not tried: offline, the answer comes after one attempt, not one per repository."""
    repos = [e.repo for e in catalog.repositories]
    if not repos:
        return Listing(endpoint, [])
    first = list_repo(repos[0], endpoint, timeout=timeout)
    if first.offline:
        rest = [RepoListing(r, error=first.error, offline=True) for r in repos[1:]]
        return Listing(endpoint, [first, *rest])
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(repos)))) as pool:
        found = list(pool.map(lambda r: list_repo(r, endpoint, timeout=timeout), repos[1:]))
    return Listing(endpoint, [first, *found])


# --------------------------------------------------------------------------- grouping
def quality_key(f: HubFile) -> tuple[tuple[int, int, int], int, float]:
    """Newer training data, then a later date, then more bits: larger is better."""
    i = f.info
    return (i.tag_rank, i.date or 0, i.bits or 0.0)


def group_files(files: Iterable[HubFile]) -> list[tuple[str, list[HubFile]]]:
    """Files grouped by the parameter count their names give ("0.1B" ... "13.3B", smallest
    first; files whose name gives none last, under ""), each group newest first."""
    groups: dict[str, list[HubFile]] = {}
    sizes: dict[str, float] = {}
    for f in files:
        label = f.info.size_label
        groups.setdefault(label, []).append(f)
        sizes[label] = f.info.params if f.info.params is not None else float("inf")
    out = []
    for label in sorted(groups, key=lambda lab: sizes[lab]):
        items = sorted(groups[label], key=lambda f: (quality_key(f), f.name), reverse=True)
        out.append((label, items))
    return out


# --------------------------------------------------------------------------- pasted references
@dataclass(frozen=True)
class Reference:
    """What a user pasted: a repository, or one file in it."""

    repo: str
    path: str | None = None
    revision: str = "main"
    endpoint: str | None = None  # a pasted address on a host other than the Hub's

    def file(self) -> HubFile:
        if not self.path:
            raise ModelError(f"{self.repo} is a repository, not a file.")
        return HubFile(self.repo, self.path, revision=self.revision, endpoint=self.endpoint)


def parse_reference(text: str) -> Reference:
    """A repository id (`owner/name`), `owner/name/path/to/file.pth`, or an address of the Hub
    or a mirror (`https://huggingface.co/owner/name[/blob|resolve|tree/REV/path]`). ModelError
    saying what is expected otherwise. An address on huggingface.co downloads through the
    endpoint setting (a mirror, if one is set); another host's address keeps its host."""
    raw = (text or "").strip()
    if not raw:
        raise ModelError("Paste a repository id (owner/name) or the address of a file on the Hub.")
    endpoint: str | None = None
    if re.match(r"(?:[a-z0-9-]+\.)*(?:huggingface\.co|hf\.co)/", raw, re.IGNORECASE):
        raw = "https://" + raw
    if re.match(r"https?://", raw, re.IGNORECASE):
        parts = urlsplit(raw)
        origin = f"{parts.scheme}://{parts.netloc}"
        if not is_official(origin):
            endpoint = origin
        segments = [unquote(s) for s in parts.path.split("/") if s]
        if segments and segments[0] == "models":
            segments = segments[1:]
        if segments and segments[0] in ("datasets", "spaces"):
            raise ModelError("That is a dataset or a Space, not a model repository.")
    else:
        segments = [s for s in raw.split("/") if s]
    if len(segments) < 2:
        raise ModelError(f"{text.strip()!r} is not a repository id: write it as owner/name.")
    repo = f"{segments[0]}/{segments[1]}"
    if not _REPO_ID.fullmatch(repo):
        raise ModelError(f"{repo!r} is not a repository id: write it as owner/name.")
    rest = segments[2:]
    revision = "main"
    if rest and rest[0] in ("blob", "resolve", "tree") and len(rest) >= 2:
        revision, rest = rest[1], rest[2:]
    elif rest and rest[0] in ("blob", "resolve", "tree"):
        rest = []
    path = "/".join(rest) or None
    if path is not None and (".." in path.split("/") or not _is_model_file(path)):
        raise ModelError(f"{path} is not a model file: the app downloads .pth and .gguf files.")
    return Reference(repo, path, revision, endpoint)


def list_reference(ref: Reference, endpoint: str) -> RepoListing:
    """The files a pasted reference names: its repository's model files, or the one file
    (with its size and SHA-256 from the repository's listing)."""
    where = ref.endpoint or endpoint
    listing = list_repo(ref.repo, where, ref.revision, file_endpoint=ref.endpoint)
    if ref.path is None or listing.error:
        return listing
    match = [f for f in listing.files if f.path == ref.path]
    if not match:
        return RepoListing(ref.repo, error=f"{ref.repo} has no file {ref.path}.")
    return RepoListing(ref.repo, match)


# --------------------------------------------------------------------------- the cache
def save_listing(listing: Listing, data: Path | None = None) -> None:
    """Keep the files of a listing that reached the Hub (private file in the data directory),
    for an offline recommendation later. Errors are ignored: it is only a cache."""
    from core.config import data_dir

    if not listing.files:
        return
    path = (data or data_dir()) / CACHE_FILE
    body = {
        "endpoint": listing.endpoint,
        "fetched_at": listing.fetched_at,
        "files": [f.to_dict() for f in listing.files],
    }
    try:
        write_atomic(path, json.dumps(body))
    except OSError:
        pass  # only a cache: the next listing writes it again


def cached_listing(data: Path | None = None) -> Listing | None:
    """The last listing kept by `save_listing`, or None."""
    from core.config import data_dir

    path = (data or data_dir()) / CACHE_FILE
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        files = []
        for item in body.get("files", []):
            try:
                files.append(HubFile.from_dict(item))
            except ValueError:
                continue
        repos: dict[str, RepoListing] = {}
        for f in files:
            repos.setdefault(f.repo, RepoListing(f.repo)).files.append(f)
        return Listing(str(body["endpoint"]), list(repos.values()), float(body["fetched_at"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def offline_files(catalog: Catalog, data: Path | None = None) -> list[HubFile]:
    """What is known without the network: the last listing's files, else the catalog's known
    files (each file once)."""
    cached = cached_listing(data)
    files = cached.files if cached is not None and cached.files else list(catalog.known_files)
    seen: set[tuple[str, str]] = set()
    out = []
    for f in files:
        if (f.repo, f.path) not in seen:
            seen.add((f.repo, f.path))
            out.append(f)
    return out


__all__ = [
    "Catalog",
    "HubError",
    "HubFile",
    "Listing",
    "Reference",
    "RepoEntry",
    "RepoListing",
    "cached_listing",
    "group_files",
    "list_reference",
    "list_repo",
    "load_catalog",
    "lookup",
    "offline_files",
    "parse_reference",
    "quality_key",
    "save_listing",
]
