"""Shared fixtures: tiny random configs and an offline Hugging Face Hub (a local cache + an HfApi stub)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

# A 4-stage Hiera small enough to build in milliseconds: 64 px in -> 16/8/4/2 px stage maps.
# (Global attention must not fall on a stage's first, query-pooling block.)
TINY_HIERA = dict(
    hidden_size=16,
    num_attention_heads=1,
    blocks_per_stage=[1, 1, 2, 1],
    embed_dim_per_stage=[16, 32, 64, 128],
    num_attention_heads_per_stage=[1, 1, 2, 2],
    window_size_per_stage=[4, 4, 4, 2],
    global_attention_blocks=[3],
    window_positional_embedding_background_size=[4, 4],
)
TINY_SIZE = 64
# Real benchmark samples beside the repository (not committed: image files stay out of the repo).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_sam2_unet_config(**overrides):
    from dsunet_hf import Sam2UNetConfig

    fields = dict(
        backbone_preset="tiny", hiera_config=TINY_HIERA, rfb_channels=16, image_size=TINY_SIZE,
        backbone_repo_id="test-org/tiny-hiera",
    )
    fields.update(overrides)
    return Sam2UNetConfig(**fields)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``): the tiny
    tensors of these tests gain nothing from a second thread, and its hand-offs cost ~15% of the time on 2 idle
    cores and up to 10x on cores shared with other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class OfflineHub:
    """A Hub-layout cache (``models--org--name/snapshots/<sha>/``) with HF_HUB_OFFLINE set.

    ``add(repo_id, folder)`` publishes a folder as a new revision; ``HfApi`` is stubbed so that
    ``create_repo`` / ``upload_folder`` write into the same cache, so push -> from_pretrained round-trips.
    As on the Hub, an upload to a branch other than ``main`` needs ``create_branch`` first.
    """

    def __init__(self, cache: Path):
        self.cache = cache
        self.pushes: list[tuple[str, str]] = []
        self.repo_types: dict[str, str] = {}  # repo id -> "model" / "space" / "dataset", as created
        self.private: dict[str, bool] = {}  # repo id -> private
        self.create_calls: list[tuple[str, bool | None]] = []  # (repo id, the private argument as given)
        self.branches: dict[str, set[str]] = {}  # repo id -> branches made with create_branch ("main" always exists)

    def repo_dir(self, repo_id: str) -> Path:
        return self.cache / ("models--" + repo_id.replace("/", "--"))

    def damage(self, repo_id: str, filename: str, keep_bytes: int) -> tuple[Path, Path]:
        """As an interrupted download leaves it: the snapshot's ``filename`` links to a blob cut after
        ``keep_bytes`` (the Hub cache's layout). Returns (the snapshot's file, the blob)."""
        snapshot_file = next((self.repo_dir(repo_id) / "snapshots").iterdir()) / filename
        blob = self.repo_dir(repo_id) / "blobs" / "0123abcd"
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(snapshot_file.read_bytes()[:keep_bytes])
        snapshot_file.unlink()
        snapshot_file.symlink_to(blob)
        return snapshot_file, blob

    def add(self, repo_id: str, folder: Path, files: dict[str, Path] | None = None, branch: str = "main") -> str:
        files = files or {p.relative_to(folder).as_posix(): p for p in Path(folder).rglob("*") if p.is_file()}
        digest = hashlib.sha1()
        for name in sorted(files):
            digest.update(name.encode())
            digest.update(Path(files[name]).read_bytes())
        sha = digest.hexdigest()
        snapshot = self.repo_dir(repo_id) / "snapshots" / sha
        for name, source in files.items():
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            if Path(source) != snapshot / name:  # a push that changes nothing: the same snapshot
                shutil.copyfile(source, snapshot / name)
        (self.repo_dir(repo_id) / "refs" / branch).parent.mkdir(parents=True, exist_ok=True)
        (self.repo_dir(repo_id) / "refs" / branch).write_text(sha)
        return sha


@pytest.fixture
def hub_offline(monkeypatch):
    """HF_HUB_OFFLINE for code run in this process: huggingface_hub and datasets read the variable once, at import,
    so setting it alone does nothing here (a subprocess reads it)."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch, hub_offline):
    import huggingface_hub
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    hub = OfflineHub(cache)

    class StubRepoUrl(str):
        repo_id: str

    def create_repo(self, repo_id, *args, **kwargs):
        hub.repo_types[repo_id] = kwargs.get("repo_type") or "model"
        hub.create_calls.append((repo_id, kwargs.get("private")))
        hub.private.setdefault(repo_id, bool(kwargs.get("private")))  # an existing repo keeps its visibility
        url = StubRepoUrl(f"https://huggingface.co/{repo_id}")
        url.repo_id = repo_id
        return url

    def create_branch(self, repo_id, *, branch, exist_ok=False, **kwargs):
        if branch in hub.branches.setdefault(repo_id, {"main"}) and not exist_ok:
            raise RuntimeError(f"409 Conflict: branch {branch} exists in {repo_id}")
        hub.branches[repo_id].add(branch)

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, revision=None, create_pr=False, **kwargs):
        branch = revision or "main"
        if not create_pr and branch not in hub.branches.get(repo_id, {"main"}):  # what the Hub answers
            raise RuntimeError(f"404 Revision Not Found for {repo_id}: Invalid rev id: {branch}")
        # As the Hub: a commit adds the allowed files of the folder to the branch's files, less delete_patterns.
        from huggingface_hub.utils import filter_repo_objects

        target = "main" if create_pr else branch
        folder = Path(folder_path)
        uploads = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
        uploads = {name: uploads[name] for name in filter_repo_objects(
            list(uploads), allow_patterns=kwargs.get("allow_patterns"), ignore_patterns=kwargs.get("ignore_patterns"))}
        head = hub.repo_dir(repo_id) / "refs" / target
        kept = {}
        if head.is_file():
            snapshot = hub.repo_dir(repo_id) / "snapshots" / head.read_text()
            kept = {p.relative_to(snapshot).as_posix(): p for p in snapshot.rglob("*") if p.is_file()}
            kept = {name: kept[name] for name in filter_repo_objects(
                list(kept), ignore_patterns=kwargs.get("delete_patterns"))}
        sha = hub.add(repo_id, folder, {**kept, **uploads}, branch=target)
        hub.pushes.append((repo_id, commit_message))
        return sha

    def update_repo_settings(self, repo_id, *, private=None, **kwargs):
        if private is not None:
            hub.private[repo_id] = private

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "update_repo_settings", update_repo_settings)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
    return hub


@pytest.fixture
def hub_namespace(offline_hub, monkeypatch):
    """The offline Hub creating a repo name without a namespace as the Hub does, in the user's ("me"): name ->
    me/name."""
    import huggingface_hub

    create = huggingface_hub.HfApi.create_repo

    def create_in_my_namespace(self, repo_id, *args, **kwargs):
        return create(self, repo_id if "/" in repo_id else f"me/{repo_id}", *args, **kwargs)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_in_my_namespace)
    return offline_hub
