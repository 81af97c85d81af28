"""The model catalogue: manifests shipped in the package's ``models/``, weights in a local cache.

Only the default model's weights ship beside its manifest, so that a fresh install
detects people offline; every other model's weights live in the cache
(docs/architecture.md, "Models"). ``pull`` fills the cache from a
mirror folder (air-gapped sites) or from the manifest's URL, and refuses any file whose
sha256 differs from the manifest's: a refused file never reaches the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from s4edge.edge.vision.manifest import Manifest, ManifestError, ModelEntry, load_manifest
from s4edge.resources import packaged

MODELS_DIR_ENV = "S4EDGE_MODELS_DIR"
CACHE_ENV = "S4EDGE_MODEL_CACHE"
MIRROR_ENV = "S4EDGE_MODEL_MIRROR"
DOWNLOAD_TIMEOUT_S = 60.0


class CatalogueError(RuntimeError):
    """A model is unknown, not cached, or its weights could not be fetched or trusted."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_models_dir() -> Path:
    override = os.environ.get(MODELS_DIR_ENV)
    return Path(override) if override else packaged("models")


def default_cache_dir() -> Path:
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path.home() / ".cache" / "s4edge" / "models"


def default_mirror() -> Path | None:
    mirror = os.environ.get(MIRROR_ENV)
    return Path(mirror) if mirror else None


@dataclass(frozen=True)
class Verification:
    name: str
    cached: bool  # weights are present, shipped or in the cache
    ok: bool
    actual_sha256: str | None
    shipped: bool = False


@dataclass
class Catalogue:
    """Manifests from ``models_dir`` plus those generated into the cache (``quantize``) or added
    by a researcher (``add``): the cache is the user's own catalogue."""

    models_dir: Path
    cache_dir: Path

    @classmethod
    def from_env(cls) -> Catalogue:
        return cls(models_dir=default_models_dir(), cache_dir=default_cache_dir())

    def scan(self) -> tuple[dict[str, ModelEntry], list[ManifestError]]:
        """Every readable manifest, and the errors of those that are not; the repo wins a name clash."""
        entries: dict[str, ModelEntry] = {}
        problems: list[ManifestError] = []
        for root in (self.models_dir, self.cache_dir):
            for path in sorted(root.glob("*/manifest.yaml")) if root.is_dir() else []:
                try:
                    entry = load_manifest(path)
                except ManifestError as exc:
                    problems.append(exc)
                    continue
                entries.setdefault(entry.name, entry)
        return entries, problems

    def get(self, name: str) -> ModelEntry:
        entries, problems = self.scan()
        if name in entries:
            return entries[name]
        for problem in problems:
            if Path(problem.source).parent.name == name:
                raise problem
        known = ", ".join(sorted(entries)) or "none"
        raise CatalogueError(f"unknown model {name!r}; known models: {known}")

    def weights_path(self, manifest: Manifest) -> Path:
        """The weights shipped beside the manifest (the default model), else the cache's copy."""
        shipped = self.models_dir / manifest.name / manifest.file
        return shipped if shipped.is_file() else self.cache_dir / manifest.name / manifest.file

    def verify(self, name: str) -> Verification:
        manifest = self.get(name).manifest
        path = self.weights_path(manifest)
        if not path.is_file():
            return Verification(name, cached=False, ok=False, actual_sha256=None)
        actual = sha256_file(path)
        ok = actual == manifest.sha256
        return Verification(name, cached=True, ok=ok, actual_sha256=actual, shipped=self._shipped(path))

    def weights(self, name: str) -> Path:
        """The shipped or cached weight file, checked against the manifest's sha256 before anyone loads it."""
        entry = self.get(name)
        manifest = entry.manifest
        path = self.weights_path(manifest)
        if not path.is_file():
            raise CatalogueError(f"model {name!r} is not in the cache ({path}); run `s4edge models pull {name}`")
        actual = sha256_file(path)
        if actual == manifest.sha256:
            return path
        remedy = self.sha_remedy(entry, path, actual)
        raise CatalogueError(f"{path} has sha256 {actual}, the manifest says {manifest.sha256}; {remedy}")

    def sha_remedy(self, entry: ModelEntry, path: Path, actual: str) -> str:
        """What to do about weights at ``path`` whose sha256 ``actual`` is not the manifest's."""
        name = entry.name
        if self._shipped(path):
            return "reinstall s4edge"
        if entry.manifest.url:
            return f"run `s4edge models pull {name}` to replace it"
        # a model of one's own, with no url to pull it from: the file or the manifest is wrong
        return (
            f"copy the right file there with `s4edge models pull {name} --from DIR`, or, if this one is "
            f"right, set sha256: {actual} in {entry.folder / 'manifest.yaml'}"
        )

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A cache folder that cannot be made (a file in its path, no permission, a full disk)."""
        try:
            yield
        except OSError as exc:
            raise CatalogueError(
                f"cannot write to the model cache {self.cache_dir} ({exc.strerror or exc}); "
                f"set {CACHE_ENV} to a folder you can write"
            ) from None

    def _shipped(self, path: Path) -> bool:
        return path.is_relative_to(self.models_dir)

    def pull(self, name: str, source: Path | None = None) -> Path:
        """Fill the cache from ``source`` (or the mirror), else from the manifest URL; sha256-checked."""
        manifest = self.get(name).manifest
        target = self.weights_path(manifest)
        if target.is_file() and sha256_file(target) == manifest.sha256:
            return target
        if self._shipped(target):
            raise CatalogueError(f"the packaged weights {target} do not match the manifest's sha256; reinstall s4edge")
        folder = source or default_mirror()
        with self._writing():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Stage inside the cache folder so the final rename is atomic on the same filesystem.
            fd, staged_name = tempfile.mkstemp(prefix=f".{manifest.file}.", dir=target.parent)
        os.close(fd)
        staged = Path(staged_name)
        try:
            origin = self._fetch(manifest, folder, staged)
            actual = sha256_file(staged)
            if actual != manifest.sha256:
                raise CatalogueError(
                    f"refused {origin}: sha256 {actual} does not match the manifest's {manifest.sha256}; "
                    "nothing was written to the cache"
                )
            os.replace(staged, target)
        finally:
            staged.unlink(missing_ok=True)
        return target

    def _fetch(self, manifest: Manifest, folder: Path | None, staged: Path) -> str:
        if folder is not None:
            found = _find_in_mirror(folder, manifest)
            if found is None:
                raise CatalogueError(
                    f"{manifest.file} not found in {folder} (looked in {folder}/{manifest.name}/, {folder}/ "
                    "and its sub-folders)"
                )
            shutil.copyfile(found, staged)
            return str(found)
        if not manifest.url:
            raise CatalogueError(
                f"model {manifest.name!r} has no url; pass --from DIR or set {MIRROR_ENV} to a folder holding "
                f"{manifest.file}"
            )
        if not manifest.url.startswith("https://"):
            raise CatalogueError(f"refused url {manifest.url!r}: only https:// downloads are allowed")
        try:
            with urllib.request.urlopen(manifest.url, timeout=DOWNLOAD_TIMEOUT_S) as response, staged.open("wb") as out:  # noqa: S310 - https only, checked above
                shutil.copyfileobj(response, out)
        except OSError as exc:
            raise CatalogueError(
                f"download of {manifest.url} failed: {exc}; on an offline site use --from DIR or {MIRROR_ENV}"
            ) from exc
        return manifest.url

    def ensure_addable(self, name: str, force: bool = False, option: str = "--name") -> None:
        """A model of one's own (``add``, ``quantize``) may take a name no packaged model has, and replace
        one in the cache only when forced; ``option`` is the command's option that named it."""
        if (self.models_dir / name / "manifest.yaml").is_file():
            raise CatalogueError(f"{name!r} is a packaged model (in {self.models_dir}); choose another {option}")
        folder = self.cache_dir / name
        if folder.exists() and not force:
            raise CatalogueError(f"model {name!r} is already in your catalogue ({folder}); pass --force to replace it")

    def add_model(
        self,
        manifest: Manifest,
        weights: Path,
        labels: list[str] | None = None,
        force: bool = False,
        check: Callable[[ModelEntry, Path], None] | None = None,
    ) -> ModelEntry:
        """Copy a researcher's weight file (and labels, as ``labels.txt``) into the cache beside its
        manifest. The folder is built aside, checked by ``check``, and renamed into place: a model
        that fails the check, or a copy whose sha256 differs from the manifest's, leaves no trace."""
        self.ensure_addable(manifest.name, force)
        with self._writing():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            work_dir = tempfile.TemporaryDirectory(prefix=".add-", dir=self.cache_dir)
        with work_dir as work:
            staged = Path(work) / manifest.name
            staged.mkdir()
            shutil.copyfile(weights, staged / manifest.file)
            actual = sha256_file(staged / manifest.file)
            if actual != manifest.sha256:
                raise CatalogueError(f"{weights} changed while being added (sha256 {actual}); add it again")
            if labels is not None:
                (staged / "labels.txt").write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
            data = manifest.model_dump(mode="json", exclude_none=True)
            (staged / "manifest.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
            entry = load_manifest(staged / "manifest.yaml")
            if check is not None:
                check(entry, staged / manifest.file)
            target = self.cache_dir / manifest.name
            if target.exists():  # --force: the old folder goes with the staging folder
                os.replace(target, Path(work) / "replaced")
            os.replace(staged, target)
        return load_manifest(target / "manifest.yaml")


def _find_in_mirror(folder: Path, manifest: Manifest) -> Path | None:
    candidates = [folder / manifest.name / manifest.file, folder / manifest.file]
    candidates += sorted(folder.glob(f"*/{manifest.file}")) if folder.is_dir() else []
    return next((path for path in candidates if path.is_file()), None)
