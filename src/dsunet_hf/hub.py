"""Hugging Face Hub I/O: resolving files of frozen-backbone repos, model cards, pushing artifacts."""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData, hf_hub_download
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


class BackboneNotAvailableError(OSError):
    """A frozen backbone's weights cannot be had (not cached offline, missing repo or file)."""

    @classmethod
    def for_repo(cls, repo_id: str, revision: str | None, details: list[str]) -> BackboneNotAvailableError:
        where = f"'{repo_id}' (revision {revision or 'main'})"
        state = (
            "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            if hub_constants.HF_HUB_OFFLINE
            else "could not be downloaded"
        )
        return cls(
            f"Cannot load the frozen backbone {where}: it {state}.\n"
            + "".join(f"  - tried {line}\n" for line in details)
            + "Fix it in one of these ways:\n"
            f"  1. download it once where the Hub is reachable: hf download {repo_id}"
            + (f" --revision {revision}" if revision else "")
            + "\n"
            "  2. point at a local copy: from_pretrained(..., backbone_repo_id='/path/to/folder-or-checkpoint')\n"
            "  3. use a self-contained artifact written with save_pretrained(..., include_backbone=True)"
        )


def resolve_repo_file(repo_id: str, filename: str, revision: str | None = None) -> tuple[Path | None, str | None]:
    """Local path of one file of a Hub repo (downloaded or from the cache), or (None, why not)."""
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision)), None
    except (
        EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, HfHubHTTPError, HFValidationError, OSError
    ) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"{type(error).__name__}: {first_line}"


def snapshot_revision(local_file: Path) -> str | None:
    """The commit hash of a file inside a Hub cache snapshot (``.../snapshots/<sha>/file``)."""
    for parent in Path(local_file).parents:
        if parent.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", parent.name):
            return parent.name
    return None


def render_model_card(template_name: str, card_data: ModelCardData, **variables) -> ModelCard:
    """Render ``model_cards/<template_name>`` (Jinja) with ``huggingface_hub.ModelCard``."""
    template = resources.files("dsunet_hf").joinpath("model_cards", template_name).read_text(encoding="utf-8")
    return ModelCard.from_template(card_data, template_str=template, **variables)


def upload_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str = "Upload fine-tuned dsunet-hf model",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """Create the repo if needed and upload a saved artifact folder in one commit; returns the repo id."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        revision=revision,
        create_pr=create_pr,
    )
    return repo_id

