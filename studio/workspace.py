"""The workspace: the one engine object a front end holds.

It owns the loaded models (a small cache keyed by identifier, device and the model files'
modification time, so a checkpoint re-saved by training is reloaded) and the policy on which
model identifiers its users may name (`ModelAccess`). Long jobs that belong to the app as a
whole (a training run) hang off it too, so every browser tab sees the same state.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from studio import checkpoints_dir, models, runs
from studio.jobs import TrainingJob
from studio.names import inside, shown
from studio.presets import load_presets
from studio.scratch import Scratch

DEFAULT_MODEL = "tiny-tale"  # a scratch preset whose tokenizer needs no download
MAX_IDENTIFIER = 4096  # longer is no folder anyone has (and the OS refuses such names)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long for the file system is no folder, not a crash
        return False


@dataclass(frozen=True)
class ModelAccess:
    """Which model identifiers the app's users (the UI and the API) may name.

    Always: a preset (pretrained ones load from the Hugging Face cache), a run in the checkpoints
    folder, a model folder under one of `roots` (the app's `--models-dir`). Any other local folder
    only when `local_folders` is on: an app reachable only from this machine serves its own user,
    who may type any path (as on the CLI); a reachable app must not open the disk to strangers.
    Every refused identifier gets the same "not found", whether or not such a folder exists, and
    the message names no path, so the app is no oracle for what is on the disk.
    """

    roots: tuple[Path, ...] = ()
    local_folders: bool = True

    def __post_init__(self) -> None:
        roots = tuple(Path(r).expanduser().resolve() for r in self.roots)
        for root in roots:
            if not root.is_dir():
                raise ValueError(f"models dir {root} is not a folder")
        object.__setattr__(self, "roots", roots)

    def check(self, identifier: object, field: str = "model") -> str:
        """`identifier`, stripped, if users may name it; else a ValueError naming `field`."""
        text = identifier.strip() if isinstance(identifier, str) else ""
        if not text:
            raise ValueError(f"{field}: choose a model: a preset, a run in the checkpoints folder or a model folder")
        if text in load_presets() or ("\x00" not in text and len(text) <= MAX_IDENTIFIER and self._allowed(text)):
            return text
        where = [f"a preset ({', '.join(load_presets())})",
                 f"a run in the checkpoints folder ({', '.join(models.list_checkpoints()) or 'none yet'})"]
        if self.roots:
            where.append("a model folder under the app's --models-dir folders")
        if self.local_folders:
            where.append("a local folder with a Hugging Face model")
        raise ValueError(f"{field} {shown(text)} not found: expected {', '.join(where[:-1])} or {where[-1]}")

    def _allowed(self, text: str) -> bool:
        path = Path(text)
        if self.local_folders:  # where models.resolve looks: a run, else the folder itself
            return _is_dir(checkpoints_dir() / path) or _is_dir(path.expanduser())
        if not path.is_absolute():  # a run (or a folder in one), never the app's own folders (_chats, .cache)
            run = checkpoints_dir() / path
            return (runs.is_run_name(text.split("/")[0]) and self._under(checkpoints_dir(), path) and _is_dir(run)
                    and run.resolve() != checkpoints_dir().resolve())
        return any(self._under(root, path) for root in self.roots) and _is_dir(path)

    @staticmethod
    def _under(root: Path, path: Path) -> bool:
        try:
            inside(root, root / path)  # an absolute `path` replaces `root` in the join
            return True
        except (ValueError, OSError):
            return False

    def listed(self) -> list[str]:
        """The model folders under the roots, as identifiers (their paths)."""
        return [str(p) for root in self.roots for p in models.model_folders(root)]


class Workspace:
    def __init__(self, max_loaded: int = 3, access: ModelAccess | None = None) -> None:
        self.max_loaded = max_loaded
        self.access = access or ModelAccess()
        self._models: OrderedDict[tuple, models.LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.training = TrainingJob()
        self.scratch = Scratch()  # the app's temp files (exports), removed when it closes

    def model_id(self, identifier: object, field: str = "model") -> str:
        """A model identifier from the UI or the API that `access` allows and that resolves to a
        model (a LoRA adapter's base model too: loading it loads the base); else a ValueError
        naming `field`."""
        identifier = self.access.check(identifier, field)
        try:
            spec = models.resolve(identifier)
        except ValueError as e:  # a folder without a model in it, say
            raise ValueError(f"{field}: {e}") from None
        if spec.source == "lora":
            self.access.check(spec.base, f"{field}'s base model")
        return identifier

    def merge(self, name: object, field: str = "run") -> Path:
        """Merge LoRA run `name` (a run in the checkpoints folder, never a path) into its base:
        writes `<run>/merged` and returns it. The base model is checked as every loaded model is."""
        folder = runs.named(name, field)
        adapter = models.adapter_folder(folder, field)
        inside(folder, adapter.parent / models.MERGED)  # merged/ goes into the run, nowhere else
        self.access.check(models.resolve(str(adapter)).base, f"{field}'s base model")
        return models.merge_run(str(folder))

    def close(self) -> None:
        """The app is shutting down: its training run stops (saving `last`), its temp files go."""
        self.training.close()
        self.scratch.close()

    def list_models(self) -> list[str]:
        """What the model pickers offer: presets, runs, then the folders under the roots."""
        return models.list_models() + self.access.listed()

    @staticmethod
    def _key(identifier: str, device: str, seed: int) -> tuple:
        spec = models.resolve(identifier)
        stamp = 0.0
        if spec.path is not None:
            weights = [p for p in Path(spec.path).glob("*.safetensors")]
            stamp = max((p.stat().st_mtime for p in weights), default=0.0)
        return spec.identifier, device, seed if spec.source == "preset" else None, str(spec.path), stamp

    def model(self, identifier: str, device: str = "auto", seed: int = 0,
              progress: models.LoadProgress | None = None, field: str = "model") -> models.LoadedModel:
        """The loaded model for an identifier (checked as `model_id` does), from the cache when it is still current."""
        identifier = self.model_id(identifier, field)
        key = self._key(identifier, device, seed)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loaded = models.load(identifier, device=device, seed=seed, progress=progress)
            self._models[key] = loaded
            while len(self._models) > self.max_loaded:
                self._models.popitem(last=False)
            return loaded
