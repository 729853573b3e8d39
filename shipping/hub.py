"""Uploading a saved Embedder to the Hugging Face Hub (huggingface_hub)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from embedders.saving import EMBEDDER_FILE


def hub_token(repo_id: str, token: str | None = None) -> str:
    """The Hub token for uploading to `repo_id` (`token`, else HF_TOKEN), or a clear refusal."""
    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise PermissionError(f"pushing to the Hugging Face Hub ({repo_id}) needs a token with write access: set "
                              "HF_TOKEN in the environment (create one at https://huggingface.co/settings/tokens); "
                              "nothing was uploaded")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise ValueError(f"--push-to-hub expects ORG/NAME (or USER/NAME), got {repo_id!r}")
    return token


def push_to_hub(directory: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Create (or reuse) the model repo `repo_id` and upload `directory` through huggingface_hub; returns the URL."""
    from huggingface_hub import HfApi

    token = hub_token(repo_id, token)
    directory = Path(directory)
    if not (directory / EMBEDDER_FILE).is_file():
        raise FileNotFoundError(f"{directory} is not an Embedder directory ({EMBEDDER_FILE} missing); export first")
    api = HfApi(token=token)
    repo = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(directory),
                      commit_message=commit_message or f"Upload embedlab model {directory.name}")
    return str(getattr(repo, "url", None) or f"https://huggingface.co/{repo_id}")

