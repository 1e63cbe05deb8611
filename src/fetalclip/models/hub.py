"""``hf-hub:ORG/REPO[/FILE]`` references, resolved through huggingface_hub's cache.

The published weights live on a model hub, so users with network access can load them by name; offline
users (and these CI machines) are served from the standard cache when the files are there. Any failure to
find the files becomes one clear ``HubUnavailableError`` instead of a network traceback. A reference is checked
before any lookup: an ``ORG/REPO`` in the hub's own alphabet and a file path of plain names (no ``..``, no
``.``, no backslash), so a reference can never name a file outside the cached snapshot.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import HubUnavailableError
from .checkpoint import CONFIG_FILE, WEIGHTS_FILE

PREFIX = "hf-hub:"
PUBLISHED_FILENAME = "FetalCLIP_weights.pt"


def parse_hub_reference(reference: str) -> tuple[str, str | None]:
    """``hf-hub:org/repo/sub/file.pt`` -> (``org/repo``, ``sub/file.pt``); the file part is optional."""
    body = reference[len(PREFIX):] if reference.startswith(PREFIX) else reference
    parts = [part for part in body.split("/") if part]
    if len(parts) < 2:
        raise HubUnavailableError(f"{reference!r}: expected hf-hub:ORG/REPO or hf-hub:ORG/REPO/FILE")
    for part in parts[:2]:
        if not _HUB_NAME.fullmatch(part) or ".." in part:
            raise HubUnavailableError(
                f"{reference!r}: {part!r} is not a hub name "
                "(letters, digits, '-', '_', '.'; not starting or ending with '.' or '-')"
            )
    for part in parts[2:]:
        if part in (".", "..") or "\\" in part or any(ord(ch) < 32 for ch in part):
            raise HubUnavailableError(f"{reference!r}: file path part {part!r} is not allowed (plain names only)")
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None)


# The hub's rule for organisation and repository names.
_HUB_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?")


def resolve_hub_reference(reference: str, cache_dir: str | None = None) -> Path:
    """A local path for the reference: a checkpoint folder (our format) or a published ``.pt`` file.

    The cache is consulted first for every candidate layout, so offline users never touch the network;
    the hub is asked only when nothing is cached, and one network failure ends the search (each request
    would otherwise sit through huggingface_hub's retries again).
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id, filename = parse_hub_reference(reference)
    if filename is not None:
        candidates = [[filename]] if filename not in (CONFIG_FILE, WEIGHTS_FILE) else [[CONFIG_FILE, WEIGHTS_FILE]]
    else:
        candidates = [[CONFIG_FILE, WEIGHTS_FILE], [PUBLISHED_FILENAME]]

    def located(paths: list[Path]) -> Path:
        # Our format is a folder: both files sit side by side in the same snapshot.
        return paths[0].parent if len(paths) > 1 else paths[0]

    for names in candidates:
        try:
            cached = [try_to_load_from_cache(repo_id, name, cache_dir=cache_dir) for name in names]
        except ValueError as exc:  # huggingface_hub's own validation (HFValidationError is a ValueError)
            reason = str(exc).splitlines()[0] if str(exc) else "invalid reference"
            raise HubUnavailableError(f"{reference}: {reason}") from None
        if all(isinstance(path, str) for path in cached):
            return located([Path(path) for path in cached])

    failures: list[str] = []
    for names in candidates:
        try:
            return located([Path(hf_hub_download(repo_id, name, cache_dir=cache_dir)) for name in names])
        except LocalEntryNotFoundError as exc:
            failures.append(f"{'+'.join(names)}: hub unreachable or offline ({type(exc).__name__})")
            break
        except (EntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
            failures.append(f"{'+'.join(names)}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise HubUnavailableError(
        f"{reference}: not in the local Hugging Face cache and the hub could not provide it "
        f"({'; '.join(failures)}). On a machine with network access, run `huggingface-cli download {repo_id}` "
        f"or download the weights by hand and pass their local path instead."
    )
