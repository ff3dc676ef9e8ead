"""Finding a diffusers model's weights, and the options every diffusers prior shares.

``model`` is a local folder (absolute, or relative to the recipe's folder or the working
directory) or a Hugging Face hub id. Hub downloads are OFF unless the recipe sets
``allow_download = true`` or the environment has ``SJC_ALLOW_DOWNLOAD=1``: with downloads
off, a hub id must already be in the local cache, and a missing one fails in well under a
second with one line -- before diffusers is even imported, and without the minutes of
connection retries an offline ``from_pretrained`` would spend. Nothing here imports torch
or diffusers, so listing and validating recipes stays fast.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from sjc_core.errors import SjcError
from sjc_core.recipes.values import MAX_PATH_LENGTH, Flag, Line, PathText, bounded

if TYPE_CHECKING:
    from sjc_core.contracts import BuildContext

ALLOW_DOWNLOAD_ENV = "SJC_ALLOW_DOWNLOAD"


DTypeName = Literal["auto", "float32", "float16", "bfloat16"]


DIFFUSERS_EXTRA = ("diffusers", "transformers", "huggingface_hub")


class HubOptions(BaseModel):
    """Where the weights come from and how they are held; every diffusers prior has these."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # Files (any one suffices) whose presence in the hub cache means the model was downloaded.
    weight_probes: ClassVar[tuple[str, ...]] = ("unet/config.json", "config.json")
    # Suffixes of single-file checkpoints the prior loads itself (``ModelSource.single_file``);
    # empty: only folders and hub ids.
    single_file_suffixes: ClassVar[tuple[str, ...]] = ()

    model: PathText = Field(..., min_length=1, max_length=MAX_PATH_LENGTH, description="hub id or local diffusers folder")
    revision: bounded(Line, min_length=1, max_length=256) | None = Field(  # type: ignore[valid-type]
        None, description="hub revision (branch, tag or commit); default: main"
    )
    variant: bounded(Line, min_length=1, max_length=64) | None = Field(  # type: ignore[valid-type]
        None, description="weight variant, e.g. 'fp16' (files named *.fp16.safetensors)"
    )
    dtype: DTypeName = Field("auto", description="network precision; auto: float16 on CUDA, float32 on CPU")
    allow_download: Flag = Field(
        False, description=f"fetch missing weights from the hub (also enabled by {ALLOW_DOWNLOAD_ENV}=1)"
    )

    def preflight(self, ctx: BuildContext) -> list[str]:
        """What building the prior checks first, cheaply: the extras are installed (else an
        error) and ``model`` names a folder or a hub id. Weights that are only missing from
        this machine's hub cache are a note, not an error: the recipe is fine, and the run
        stops at once with the same line until they are downloaded."""
        try:
            resolve_source(self, ctx, self.weight_probes)
        except SjcError as missing:
            resolve_source(self.model_copy(update={"allow_download": True}), ctx, self.weight_probes)
            return missing.problems  # only the cache lacked them
        return []


INSTALL_EXTRA = 'pip install -e ".[diffusers]"'  # the README's line, run in the sjc folder


def missing_extras() -> list[str]:
    """The packages of the ``diffusers`` extra that cannot be imported here (nothing is imported)."""
    missing = []
    for name in DIFFUSERS_EXTRA:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module without a spec
            found = False
        if not found:
            missing.append(name)
    return missing


def require_extras() -> None:
    """One line, not a traceback, when diffusers, transformers or huggingface_hub is missing."""
    missing = missing_extras()
    if missing:
        raise SjcError(
            f"prior.name: this prior needs the diffusers extra ({', '.join(missing)} not installed): "
            f"{INSTALL_EXTRA}"
        )


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``model`` option: what to pass to ``from_pretrained`` and how."""

    ref: str  # absolute folder path, or hub id
    local_folder: bool
    local_files_only: bool
    revision: str | None
    variant: str | None
    single_file: bool = False  # ref is one checkpoint file (see HubOptions.single_file_suffixes)

    def has_file(self, relative: str) -> bool:
        """Whether ``relative`` exists in the folder or the hub cache (never asks the network)."""
        if self.local_folder:
            return (Path(self.ref) / relative).is_file()
        return _cached_file(self.ref, relative, self.revision) is not None


def downloads_allowed(option: bool) -> bool:
    return option or os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _looks_like_path(model: str) -> bool:
    """Hub ids are 'name' or 'owner/name'; anything else with a separator is meant as a path."""
    return (
        model.startswith((".", "/", "~", "\\"))
        or model.count("/") > 1
        or "\\" in model
        or (len(model) > 1 and model[1] == ":")  # a Windows drive
    )


def _cached_file(repo_id: str, filename: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except Exception:  # an invalid repo id or revision cannot be in the cache
        return None
    return found if isinstance(found, str) else None


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def resolve_source(options: HubOptions, ctx: BuildContext, probes: Sequence[str]) -> ModelSource:
    """Turn ``options.model`` into a folder or a usable hub id, or fail fast with one line.

    ``probes`` are files (any one suffices) whose presence in the hub cache means the
    model was downloaded before, e.g. ``unet/config.json``.
    """
    require_extras()
    model = options.model.strip()
    path = Path(model).expanduser()
    candidates = [path] if path.is_absolute() else [Path(ctx.base_dir) / path, path]
    for candidate in candidates:
        if candidate.is_dir():
            return ModelSource(str(candidate.resolve()), True, True, options.revision, options.variant)
        if candidate.is_file():
            suffixes = options.single_file_suffixes
            if candidate.suffix.lower() in suffixes:
                return ModelSource(str(candidate.resolve()), True, True, None, None, single_file=True)
            if suffixes:
                raise SjcError(
                    f"prior.model: '{candidate}' is a file of unknown type; a single-file checkpoint ends in "
                    f"{' or '.join(suffixes)} (or give a diffusers folder or a hub id)"
                )
            raise SjcError(
                f"prior.model: '{candidate}' is a file; a diffusers folder is needed (a single-file "
                "checkpoint converts with diffusers: Pipeline.from_single_file(path).save_pretrained(folder))"
            )
    if path.suffix.lower() in options.single_file_suffixes and path.suffix:
        looked = " or ".join(f"'{c}'" for c in candidates)
        raise SjcError(f"prior.model: file {looked} does not exist")
    if _looks_like_path(model):
        looked = " or ".join(f"'{c}'" for c in candidates)
        raise SjcError(f"prior.model: folder {looked} does not exist")
    allow = downloads_allowed(options.allow_download)
    source = ModelSource(model, False, not allow, options.revision, options.variant)
    if not allow and not any(source.has_file(probe) for probe in probes):
        revision = f" (revision {options.revision})" if options.revision else ""
        raise SjcError(
            f"prior.model: '{model}'{revision} is not in the local Hugging Face cache ({hub_cache_dir()}) "
            f"and hub downloads are off; point prior.model at a local diffusers folder, or set "
            f"prior.allow_download = true (or {ALLOW_DOWNLOAD_ENV}=1) on a machine that can reach the hub"
        )
    return source


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the hub endpoint (``HF_ENDPOINT``, else huggingface.co) takes no connection, or
    None when it does: one TCP connect, so an offline machine hears it at once instead of
    after the hub library's retries, and before a message about a missing config file."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def resolve_for_loading(options: HubOptions, ctx: BuildContext, probes: Sequence[str]) -> ModelSource:
    """:func:`resolve_source`, and when the weights must come from the hub, a check that the
    hub can be reached, so an offline machine is told that first."""
    source = resolve_source(options, ctx, probes)
    if source.local_folder or source.local_files_only or any(source.has_file(probe) for probe in probes):
        return source
    reason = hub_unreachable()
    if reason is not None:
        from huggingface_hub import constants

        raise SjcError(
            f"prior.model: the Hugging Face hub ({constants.ENDPOINT}) could not be reached ({reason}), and "
            f"'{source.ref}' is not in the local cache ({hub_cache_dir()}); connect this machine (or set "
            "HF_ENDPOINT to a mirror), or point prior.model at a local diffusers folder"
        )
    return source


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
