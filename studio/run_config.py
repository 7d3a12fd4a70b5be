"""The run config: what one training run is asked to do, as a frozen, validated dataclass.

`TrainConfig` names the model, the data, where the run lives and how it trains (its
`TrainSettings`, precision, LoRA...); it round-trips through JSON (`job.json`, run.json). It lives
apart from the loop (`studio.training`), so the Train tab, the job runner and the lesson read and
write configs without importing torch's training stack or accelerate.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from studio import data, models, runs, tracking
from studio.compiling import COMPILE_MODES, check_mode
from studio.config import check_keys, setting
from studio.devices import PRECISIONS
from studio.lora import LoraSettings
from studio.names import plain_name, slug
from studio.presets import TrainSettings


@dataclass(frozen=True)
class TrainConfig:
    model: str  # a scratch preset trains from scratch; a checkpoint or pretrained preset fine-tunes
    data: str = "builtin"  # "builtin", a file path, or "hub:<name>"
    name: str = ""  # the run's name, a plain name; "" = the folder's name, else "<model>-<data>"
    # where the run lives; "" = <checkpoints>/<name>. Only the CLI and the benchmarks set it: they
    # run as the user, while a name from the UI or the API must stay inside the checkpoints folder
    folder: str = ""
    settings: TrainSettings | None = None  # None = the model's preset defaults
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    resume: bool = False
    grad_checkpointing: bool = False
    fit_memory: bool = True  # shrink the micro-batch (keeping the effective batch) to fit the device
    nan_patience: int = 3  # NaN steps in a row before restoring the last checkpoint
    sample_tokens: int = 32
    heldout_eval: bool = True  # built-in data: score the held-out questions at the end
    block_size: int = 0  # training window in tokens; 0 = the model's context
    split_mode: str = "documents"  # validation split: "documents" (10% of them) | "sequential" (the last 10%)
    eval_data: str = ""  # a data spec whose whole text scores the final model ("" = none)
    report_to: str = "none"  # also mirror step/eval rows to: tensorboard | wandb | trackio
    lora: LoraSettings = LoraSettings()  # r > 0: train LoRA adapters on the frozen model
    # off by default: at the studio's sizes on a 2-core CPU a compiled step was no faster while a
    # compile took 30-60 s (README), and "auto" learns that only by compiling once per model shape,
    # which a first run (the one-click lesson) would pay; "auto" is the measured choice, as "fast" is
    # for precision (`studio.compiling`)
    compile: str = setting("off", "torch.compile the model for the training steps: auto (when the measured "
                           "time saved over the run's steps exceeds the compile time) | on | off",
                           choices=COMPILE_MODES, ui=True)

    def __post_init__(self) -> None:
        # a resumed full fine-tune goes on from its own last/, so the model it started from may
        # have moved or gone since; anything else must resolve (a ValueError naming the choices)
        base_optional = self.resume and self.settings is not None and not self.lora.enabled
        spec = None if base_optional else models.resolve(self.model)
        if not (self.data or "").strip():
            raise ValueError("data must be 'builtin', a file path, or 'hub:<name>'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.nan_patience < 1:
            raise ValueError(f"nan_patience must be >= 1, got {self.nan_patience}")
        if self.block_size < 0:
            raise ValueError(f"block_size must be >= 0 (0 = the model's context), got {self.block_size}")
        if not 1 <= self.sample_tokens <= 1024:
            raise ValueError(f"sample_tokens must be in [1, 1024], got {self.sample_tokens}")
        data.check_split_mode(self.split_mode)
        check_mode(self.compile)
        tracking.check_report_to(self.report_to)
        if self.settings is None:
            object.__setattr__(self, "settings", spec.preset.train if spec.preset else TrainSettings())
        if self.name:
            plain_name(self.name, "run name")
        elif self.folder:
            object.__setattr__(self, "name", slug(Path(self.folder).name))
        else:
            stem = Path(self.data).stem if Path(self.data).suffix else self.data
            object.__setattr__(self, "name", slug(f"{Path(self.model).name}-{stem}"))

    @property
    def run_dir(self) -> Path:
        return Path(self.folder).expanduser() if self.folder else runs.run_dir(self.name)

    def to_dict(self) -> dict:
        return {**asdict(self), "settings": asdict(self.settings), "lora": self.lora.to_dict()}

    @classmethod
    def from_dict(cls, values: dict, strict: bool = True) -> "TrainConfig":
        """The inverse of to_dict. Strict rejects unknown keys (a config file with a typo);
        lenient takes the config out of a run.json, which also holds status and reports."""
        names = {f.name for f in fields(cls)}
        if "out" in values and not {"name", "folder"} & values.keys():  # written before the split
            values = {**{k: v for k, v in values.items() if k != "out"}, **runs.name_or_folder(values["out"] or "")}
        if strict:
            check_keys(cls, values, "train config")
        values = {k: v for k, v in values.items() if k in names}
        if isinstance(values.get("settings"), dict):
            values["settings"] = TrainSettings.from_dict(values["settings"], "train config settings")
        if isinstance(values.get("lora"), dict):
            values["lora"] = LoraSettings.from_dict(values["lora"], "train config lora")
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "TrainConfig":
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"config: cannot read {path}: {e}") from None
        return cls.from_dict(values)
