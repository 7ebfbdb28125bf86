"""An in-process stand-in for the Hub: `HfApi.create_repo`, `HfApi.create_commit` and `HfApi.upload_folder` (which with
hf_xet installed uploads through its own pipeline, not `create_commit`) record what would be sent, with each file's
bytes, instead of going to the network."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from huggingface_hub.hf_api import RepoUrl
from huggingface_hub.utils import filter_repo_objects
from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

TOKEN = "hf_publishTestTokenDoNotLeak0123456789"
"""A token-shaped secret that must appear in no uploaded file and no output."""


class FakeHub:
    """Records repositories created and commits made (``commits[i]["files"]``: path in repo -> bytes)."""

    def __init__(self, monkeypatch):
        self.repos: list[dict] = []
        self.commits: list[dict] = []
        hub = self

        def create_repo(api, repo_id, *, token=None, private=None, repo_type=None, exist_ok=False, **kwargs):
            hub.repos.append({"repo_id": repo_id, "private": private, "repo_type": repo_type or "model"})
            prefix = "datasets/" if repo_type == "dataset" else ""
            return RepoUrl(f"https://huggingface.co/{prefix}{repo_id}")

        def create_commit(api, repo_id, operations, *, commit_message, repo_type=None, revision=None, token=None,
                          run_as_future=False, **kwargs):  # fmt: skip
            files, deleted = {}, []
            for operation in operations:
                if not isinstance(operation, CommitOperationAdd):
                    deleted.append(operation.path_in_repo)
                    continue
                source = operation.path_or_fileobj
                files[operation.path_in_repo] = (
                    Path(source).read_bytes() if isinstance(source, (str, Path))
                    else source if isinstance(source, bytes) else source.read()
                )  # fmt: skip
            number = len(hub.commits) + 1
            hub.commits.append(
                {"repo_id": repo_id, "repo_type": repo_type or "model", "message": commit_message, "files": files,
                 "deleted": deleted, "revision": revision, "token": token if token is not None else api.token}
            )  # fmt: skip
            info = CommitInfo(
                commit_url=f"https://huggingface.co/{repo_id}/commit/{number:040x}",
                commit_message=commit_message,
                commit_description="",
                oid=f"{number:040x}",
            )
            if run_as_future:
                future = Future()
                future.set_result(info)
                return future
            return info

        def upload_folder(api, *, repo_id, folder_path, path_in_repo=None, commit_message=None, token=None,
                          repo_type=None, revision=None, allow_patterns=None, ignore_patterns=None,
                          run_as_future=False, **kwargs):  # fmt: skip
            # upload_folder's own file selection: relative POSIX paths filtered by the patterns and the defaults
            folder = Path(folder_path)
            ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
            names = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
            chosen = filter_repo_objects(
                names, allow_patterns=allow_patterns, ignore_patterns=ignore + DEFAULT_IGNORE_PATTERNS
            )
            prefix = f"{path_in_repo.strip('/')}/" if path_in_repo else ""
            operations = [CommitOperationAdd(path_in_repo=prefix + n, path_or_fileobj=str(folder / n)) for n in chosen]
            message = commit_message or "Upload folder"
            return create_commit(
                api,
                repo_id,
                operations,
                commit_message=message,
                repo_type=repo_type,
                revision=revision,
                token=token,
                run_as_future=run_as_future,
            )

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)

    def commits_to(self, path_prefix: str | None = None) -> list[dict]:
        """Commits whose files all lie at the repository's top level (``None``) or under ``path_prefix``."""
        if path_prefix is None:
            return [c for c in self.commits if not any(name.startswith("last-checkpoint/") for name in c["files"])]
        return [c for c in self.commits if all(name.startswith(path_prefix) for name in c["files"])]


def assert_no_token(hub: FakeHub, *texts: str) -> None:
    """The test token appears in no uploaded file and in none of ``texts`` (captured output, logs)."""
    for commit in hub.commits:
        for name, data in commit["files"].items():
            assert TOKEN.encode() not in data, f"the token is in uploaded file {name}"
    for text in texts:
        assert TOKEN not in text, "the token was printed"
