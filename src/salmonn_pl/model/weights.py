"""Weights by name: local paths, Hugging Face repositories and files, and plain URLs, all cached.

Every weight field of :class:`~salmonn_pl.model.salmonn.SalmonnConfig` (and ``qwen2_audio_path`` of
:class:`~salmonn_pl.model.qwen2_audio.Qwen2AudioConfig`) takes one of

* a local path (``/models/vicuna-13b-v1.1``, ``salmonn_v1.pth``): used as it is;
* a Hugging Face repository id for a directory, ``org/name`` or ``org/name@revision``
  (``openai/whisper-large-v2``) — only what salmonn-pl reads is fetched: the ``*.json`` configs,
  the SentencePiece ``*.model`` and the weights in one format (safetensors, else ``*.bin``);
* one file of a repository, ``hf://org/name/path/in/repo[@revision]``
  (``hf://tsinghua-ee/SALMONN/salmonn_v1.pth``);
* an ``https://`` URL of a file hosted elsewhere (BEATs), optionally pinned by ``#sha256=<hex>``.

Repositories go through huggingface_hub (``snapshot_download`` / ``hf_hub_download``), so its cache,
``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE=1`` apply as everywhere else. URLs
are downloaded once by ``torch.hub.download_url_to_file`` (progress bar, hash check) into
huggingface_hub's assets cache (``$HF_HOME/assets/salmonn-pl/urls/``). Offline, a name that is not
cached fails at once with the field, the name and the command that fetches it.

Pre-fetch everything a config names (e.g. before moving the cache to an offline cluster)::

    python -m salmonn_pl.model.weights --config configs/sakura_eval.yaml
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from huggingface_hub import cached_assets_path, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

log = logging.getLogger(__name__)

Kind = Literal["dir", "file"]
# What SalmonnConfig's weight fields hold: a directory (LLM, Whisper) or a single file (BEATs, checkpoint).
WEIGHT_FIELDS: dict[str, Kind] = {"llm_path": "dir", "whisper_path": "dir", "beats_path": "file", "ckpt": "file"}

# Weight fields of the other families' configs (Qwen2AudioConfig): fetched by the prefetch command too.
OTHER_FAMILY_FIELDS: dict[str, Kind] = {"qwen2_audio_path": "dir"}

# A directory's configs, tokenizer (SentencePiece *.model; BPE merges *.txt) and chat template
# (*.jinja), then its weights in one format (repos often hold several).
_DIR_FILES = ["*.json", "*.model", "*.txt", "*.jinja"]
_WEIGHT_FORMATS = (["*.safetensors"], ["*.bin"])
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LOOPBACK_HOSTS = {"localhost"}


class WeightsUnavailableError(FileNotFoundError):
    """A named weight is neither a local path nor obtainable (offline and not cached, download failed)."""


@dataclass(frozen=True)
class WeightName:
    """A parsed weight name: ``scheme`` "path", "repo" (a directory), "hf_file" or "url"."""

    scheme: Literal["path", "repo", "hf_file", "url"]
    value: str  # the path, repo id, or URL without its #fragment
    filename: str = ""  # hf_file: the file inside the repo
    revision: str | None = None
    sha256: str = ""  # url: the expected digest, lower-case hex


def parse_weight_name(name: str) -> WeightName:
    """Classify ``name``. An existing local path always wins over a repo id of the same spelling."""
    if name.startswith("hf://"):
        rest, revision = _split_revision(name[len("hf://") :])
        parts = rest.split("/", 2)
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"{name!r}: expected hf://<org>/<repo>[/<file>][@<revision>]")
        repo_id = "/".join(parts[:2])
        if len(parts) == 2:
            return WeightName("repo", repo_id, revision=revision)
        return WeightName("hf_file", repo_id, filename=parts[2], revision=revision)
    if name.startswith(("https://", "http://")):
        url, _, fragment = name.partition("#")
        sha256 = ""
        if fragment:
            key, _, digest = fragment.partition("=")
            if key != "sha256" or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
                raise ValueError(f"{name!r}: the only URL fragment understood is #sha256=<64 hex digits>")
            sha256 = digest.lower()
        return WeightName("url", url, sha256=sha256)
    if not Path(name).expanduser().exists():
        repo, revision = _split_revision(name)
        if _REPO_ID.match(repo):
            return WeightName("repo", repo, revision=revision)
    return WeightName("path", name)


def _split_revision(text: str) -> tuple[str, str | None]:
    if "@" in text:
        head, _, revision = text.rpartition("@")
        if not revision:
            raise ValueError(f"{text!r}: empty revision after '@'")
        return head, revision
    return text, None


def resolve_weight(name: str, field: str, kind: Kind) -> str:
    """The local path of weight ``name`` given for config field ``field`` (downloading if needed).

    ``kind`` is what the field holds: a "dir" (Hugging Face model directory) or a "file". An empty
    name stays empty (the field is unset). Raises :class:`WeightsUnavailableError` naming the field,
    the name and how to fetch it when the name cannot be had (offline and not cached).
    """
    if not name:
        return name
    parsed = parse_weight_name(name)
    if parsed.scheme == "path":
        return name
    if parsed.scheme == "repo" and kind == "file":
        raise ValueError(
            f"{field}: {name!r} names a repository, but {field} is one file; name the file in it as "
            f"hf://{parsed.value}/<file>"
        )
    if parsed.scheme in ("hf_file", "url") and kind == "dir":
        raise ValueError(f"{field}: {name!r} names one file, but {field} is a model directory (org/name)")
    if parsed.scheme == "repo":
        return _resolve_repo(parsed, field, name)
    if parsed.scheme == "hf_file":
        return _resolve_hf_file(parsed, field, name)
    return _resolve_url(parsed, field, name)


def _unavailable(field: str, name: str, fetch: str, error: Exception) -> WeightsUnavailableError:
    where = f"the Hugging Face cache {constants.HF_HUB_CACHE}"
    reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"it could not be downloaded ({error})"
    local = f" (nor is it a local path: {Path(name).expanduser().absolute()} does not exist)" if "://" not in name else ""
    return WeightsUnavailableError(
        f"{field}: {name!r} is not in {where}{local} and {reason}. Fetch it where there is network, into the cache "
        f"this run uses (HF_HOME / HF_HUB_CACHE):\n    {fetch}\n"
        f"or fetch every weight of a config: python -m salmonn_pl.model.weights --config <config.yaml>"
    )


def _revision_flag(revision: str | None) -> str:
    return f" --revision {revision}" if revision else ""


def _resolve_repo(parsed: WeightName, field: str, name: str) -> str:
    fetch = f"hf download {parsed.value}{_revision_flag(parsed.revision)}   (huggingface-cli download ... before huggingface_hub 1.0)"
    folder = None
    try:
        for weights in _WEIGHT_FORMATS:
            folder = Path(snapshot_download(parsed.value, revision=parsed.revision, allow_patterns=_DIR_FILES + weights))
            if any(folder.glob(weights[0])):
                return str(folder)
    except LocalEntryNotFoundError as error:
        raise _unavailable(field, name, fetch, error) from error
    except HfHubHTTPError as error:  # no such repo or revision, gated, no access
        raise WeightsUnavailableError(
            f"{field}: {name!r} is no local path ({Path(name).expanduser().absolute()} does not exist) and as a "
            f"Hugging Face repo id: {error}"
        ) from error
    raise WeightsUnavailableError(f"{field}: {name!r} ({folder}) holds neither *.safetensors nor *.bin weights")


def _resolve_hf_file(parsed: WeightName, field: str, name: str) -> str:
    fetch = f"hf download {parsed.value} {parsed.filename}{_revision_flag(parsed.revision)}"
    try:
        return hf_hub_download(parsed.value, parsed.filename, revision=parsed.revision)
    except LocalEntryNotFoundError as error:
        raise _unavailable(field, name, fetch, error) from error
    except HfHubHTTPError as error:  # no such repo, file or revision, gated, no access
        raise WeightsUnavailableError(f"{field}: {name!r}: {error}") from error


def url_cache_path(url: str) -> Path:
    """Where the file at ``url`` (without fragment) is cached: one folder per URL, the URL's file name."""
    filename = Path(unquote(urlsplit(url).path)).name or "download"
    folder = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cached_assets_path(library_name="salmonn-pl", namespace="urls", subfolder=folder, assets_dir=constants.HF_ASSETS_CACHE) / filename


def _resolve_url(parsed: WeightName, field: str, name: str) -> str:
    url = parsed.value
    parts = urlsplit(url)
    if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
        raise ValueError(f"{field}: {name!r}: plain http is accepted only from this machine (loopback); use https")
    target = url_cache_path(url)
    if target.is_file():
        return str(target)
    if constants.HF_HUB_OFFLINE:
        error = WeightsUnavailableError(f"{field}: {url!r} is not cached at {target} and HF_HUB_OFFLINE is set")
        raise _unavailable(field, name, f"python -m salmonn_pl.model.weights '{name}'", error)
    # torch.hub's downloader: a progress bar, a temporary file moved into place only when complete,
    # and the digest check (it compares a prefix; we give the whole digest).
    from torch.hub import download_url_to_file

    log.info("%s: downloading %s to %s", field, url, target)
    try:
        download_url_to_file(url, str(target), hash_prefix=parsed.sha256 or None, progress=True)
    except RuntimeError as error:
        if "invalid hash value" in str(error):
            raise ValueError(f"{field}: the file at {url} does not have sha256 {parsed.sha256}: {error}") from error
        raise
    except OSError as error:
        raise _unavailable(field, name, f"python -m salmonn_pl.model.weights '{name}'", error) from error
    return str(target)


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_weights(fields: dict[str, str]) -> dict[str, str]:
    """Resolve every weight field in ``fields`` (``llm_path``, ``whisper_path``, ``beats_path``,
    ``ckpt``) to a local path, in that order, before anything is loaded."""
    return {field: resolve_weight(fields.get(field, ""), field, kind) for field, kind in WEIGHT_FIELDS.items() if field in fields}


def main(argv: list[str] | None = None) -> None:
    """Pre-fetch weights: ``--config file.yaml`` (its ``model.model`` weight fields, or a probe
    config's ``model``) and/or names given as arguments (fetched as files unless repo ids)."""
    import argparse

    import yaml

    parser = argparse.ArgumentParser(prog="python -m salmonn_pl.model.weights", description=main.__doc__)
    parser.add_argument("names", nargs="*", help="weight names: org/repo[@rev], hf://org/repo/file[@rev], https://...")
    parser.add_argument("--config", action="append", default=[], help="a salmonn-pl YAML config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    wanted: list[tuple[str, str, Kind]] = []
    for config in args.config:
        model = yaml.safe_load(Path(config).read_text()).get("model") or {}
        model = model.get("model", model)
        model = model.get("init_args", model)  # a family's config given as {class_path, init_args}
        fields = WEIGHT_FIELDS | OTHER_FAMILY_FIELDS
        wanted += [(model[f], f"{config}: {f}", kind) for f, kind in fields.items() if model.get(f)]
    for name in args.names:
        wanted.append((name, name, "dir" if parse_weight_name(name).scheme == "repo" else "file"))
    for name, field, kind in wanted:
        print(f"{field}: {name} -> {resolve_weight(name, field, kind)}")
    if not wanted:
        parser.error("nothing to fetch: give --config or names")


if __name__ == "__main__":
    main(sys.argv[1:])
