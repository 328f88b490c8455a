"""Run configuration: four dataclasses, one flag per field, and the order in which values win.

A value comes from, in increasing priority: the dataclass default, the task's registry defaults
(``TASKS[name].defaults``), a config file (``--config run.json``, nested like ``config.json`` or
flat), then command-line flags. Every field is a flag: ``hidden_size`` is ``--hidden-size``, so
adding a field adds a flag with no other edit. Field names are unique across the sections.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from gated.harness.files import read_json


def _f(default, help: str, choices=None):
    """A dataclass field whose ``help`` becomes its flag's help text and whose ``choices`` (names,
    or a function returning them, read when ``--help`` is built) its metavar: ``--core {lstm,gru,mgu}``.
    The values are checked by :func:`validate` (variant names are case-insensitive, with aliases)."""
    return field(default=default, metadata={"help": help, "choices": choices})


def task_names() -> tuple[str, ...]:
    from gated.harness.tasks import TASKS

    return tuple(TASKS)


def core_names() -> tuple[str, ...]:
    from gated.harness.model import CORE_MODULES

    return tuple(CORE_MODULES)


def variant_names() -> tuple[str, ...]:
    import gated

    return tuple(gated.VARIANTS)


def machine_load() -> tuple[int | None, float | None]:
    """``(os.cpu_count(), 1-minute load average)``; None where the platform does not say."""
    import os

    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows; an unreadable /proc/loadavg
        load = None
    return os.cpu_count(), load


def auto_threads(default: int, cpus: int | None, load: float | None) -> int:
    """The ``--threads 0`` rule: torch's ``default``, lowered to the cores the 1-minute load
    average leaves free (``cpus - load``, rounded), at least 1; ``default`` where ``cpus`` or
    ``load`` is unknown.

    A thread that shares a busy core stalls the others at every parallel region, and a small
    model has many short ones: on 2 AVX2 cores with the other one busy, a train step of the copy
    task's UR-LSTM (hidden 64, batch 10, T 70) took 160 ms with 2 threads and 20 ms with 1
    (torch.nn.LSTM: 293 and 8 ms); ``gated train`` on that task ran 1-17 steps/s with 2 threads
    and 110 with 1 when other work kept the load at 5.
    """
    if not cpus or load is None or default <= 1:
        return max(1, default)
    return max(1, min(default, int(cpus - load + 0.5)))


def choose_threads(requested: int, default: int, cpus: int | None, load: float | None) -> tuple[int, str | None]:
    """The torch threads of ``--threads requested`` (0: :func:`auto_threads`) and a note to log
    when the load changed the choice, or when an explicit count exceeds the free cores."""
    busy = f"the other cores are busy (load {load:.1f} on {cpus} cores)" if load is not None else ""
    if requested == 0:
        threads = auto_threads(default, cpus, load)
        return threads, (None if threads == default else
                         f"--threads 0 (automatic): {threads} thread(s), not torch's {default}: {busy}")
    best = auto_threads(requested, cpus, load)
    return requested, (None if best == requested else f"{busy}: a small model runs faster with --threads {best}")


OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine", "linear")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")


@dataclass
class TaskConfig:
    """What to learn. Fields a task does not use are ignored by it."""

    task: str = _f("copy", 'the task (listed below)', task_names)
    delay: int = _f(480, 'copy: blanks between the 10 symbols and the 10 cues (T = delay + 20)')
    length: int = _f(2000, 'adding: sequence length T')
    pixels_per_step: int = _f(1, "image tasks: pixels read per step (1: the paper's 784 / 1024 steps)")
    val_size: int = _f(5000, 'image tasks: training images held out as the validation split')
    bptt: int = _f(128, 'language modelling: truncated-BPTT window (state is carried across windows)')
    vocab_size: int = _f(10000, 'word-level LM: most frequent training words kept, the rest <unk>')
    data_path: str | None = _f(None, 'scifar10: a dir of CIFAR-10 python batches (default: the cache)')


@dataclass
class ModelConfig:
    """The network: an input layer, a gated RNN, a linear readout."""

    core: str = _f("lstm", 'the recurrent core', core_names)
    variant: str = _f("UR", "a gate variant the core supports (listed below; also a model name as the tables "
                      "print it: UR-LSTM, or LSTM for '-' with lstm, which sets --core when it is not given); "
                      "config.json stores the label", variant_names)
    hidden_size: int = _f(256, 'RNN state width H')
    num_layers: int = _f(1, 'stacked RNN layers')
    dropout: float = _f(0.0, 'between layers, as in torch.nn.LSTM')
    embed_size: int = _f(256, 'language modelling: token embedding width')
    t_max: float | None = _f(None, "chrono (C) variant: longest timescale; None: the task's length")
    backend: str = _f("auto", 'the recurrence implementation', ("auto", "fused_cpu", "triton", "reference"))
    forget_bias: float | None = _f(None, "set the forget-gate bias to this after init (Gers et al.'s 1.0); "
                                   "None: the variant's own init")
    layer_norm: bool = _f(False, "LSTM/GRU/MGU: Ba et al.'s LayerNorm cell (docs/variants.md, cell options)")
    zoneout: float = _f(0.0, "LSTM/GRU/MGU: zoneout probability on every state (Krueger et al. 2017)")
    recurrent_dropout: float = _f(0.0, "LSTM/GRU/MGU: variational dropout on the h fed to W_hh, one mask a sequence")
    weight_dropout: float = _f(0.0, "LSTM/GRU/MGU: DropConnect on W_hh, one mask a forward call (AWD-LSTM)")


@dataclass
class OptimConfig:
    """Optimisation. ``batch_size`` is global: torchrun processes split it."""

    optimizer: str = _f("adam", 'the optimizer', OPTIMIZERS)
    lr: float = _f(1e-3, 'peak learning rate')
    weight_decay: float = _f(0.0, 'L2 (adam) or decoupled (adamw) weight decay')
    schedule: str = _f("constant", 'learning-rate schedule (cosine, linear: decay to 0 at the last step)', SCHEDULES)
    warmup: int = _f(0, 'linear warm-up steps')
    clip: float = _f(1.0, 'gradient-norm clipping; 0 disables')
    batch_size: int = _f(10, 'global batch size (split over torchrun processes)')


@dataclass
class TrainConfig:
    """The loop: length, seed, logging, evaluation and checkpoint cadence, device."""

    steps: int = _f(10000, 'total optimizer steps (a resumed run continues to this)')
    seed: int = _f(0, 'seeds weights, data and the pMNIST permutation')
    out: str | None = _f(None, 'run directory (config.json, metrics.jsonl, checkpoints/)')
    device: str = _f("auto", "auto: cuda if available, else cpu; under torchrun, cuda is each process's "
                     "cuda:LOCAL_RANK", DEVICES)
    threads: int = _f(0, "torch CPU threads; 0: automatic: torch's default (the cores, or OMP_NUM_THREADS), lowered "
                      "to the cores the 1-minute load average leaves free, at least 1 (a small model on 2 busy cores "
                      "ran 7-100x slower with 2 threads than with 1)")
    log_every: int = _f(10, 'steps between metrics.jsonl records')
    eval_every: int = _f(500, 'steps between validation evaluations; 0: only at the end (test: once, at the end)')
    eval_batches: int = _f(10, 'batches per validation; 0: the whole split (test always uses its whole split)')
    ckpt_every: int = _f(500, 'steps between checkpoints; the last step is always saved')
    keep_best: bool = _f(False, "also keep the checkpoint of the best validation main metric in "
                         "checkpoints/best/ (never removed by later saves)")
    tensorboard: bool = _f(False, "also log to RUN/tensorboard: the metrics, and gate histograms at each "
                           "evaluation (pip install 'gated[tensorboard]')")
    progress: bool = _f(True, 'progress bar (on a terminal)')
    autocast: str = _f("off", "run the forward passes (training and evaluation) under torch.autocast in this dtype, "
                       "with float32 parameters (mixed precision; on the CPU gated computes it in float32 inside, "
                       "docs/compatibility.md)", ("off", "bfloat16", "float16"))


CELL_OPTIONS = ("layer_norm", "zoneout", "recurrent_dropout", "weight_dropout")  # gated/options.py, by name
# Fields added to a frozen section after runs were saved: at their defaults they are left out of the
# checkpoint fingerprint (gated.harness.checkpoint.fingerprint), so runs saved before them still resume.
LATER_FIELDS = {"model": {"layer_norm": False, "zoneout": 0.0, "recurrent_dropout": 0.0, "weight_dropout": 0.0}}

SECTIONS = {"task": TaskConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig}
# Fields that define what is trained; a resumed run may not change them.
FROZEN_SECTIONS = ("task", "model")


@dataclass
class RunConfig:
    """Everything one run needs; ``config.json`` is ``asdict`` of this."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def flat(self) -> dict:
        return {k: v for section in self.to_dict().values() for k, v in section.items()}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class Schema:
    """Sections of config dataclasses read as one flat namespace of uniquely named fields: type
    checks, one flag per field, JSON files nested by section or flat, and the ``--resume`` rule.
    ``gated train`` and ``gated rl train`` each build one from their own sections.

    Args:
        sections: section name -> dataclass (its fields' ``metadata["help"]`` becomes flag help).
        frozen: the sections that define what is trained; a resumed run may not change them.
        canonical: flat values -> the same values, each spelled one way (``gated train``'s
            variant label), so that ``--resume`` compares meanings, not spellings.
    """

    def __init__(self, sections: dict[str, type], frozen: tuple[str, ...], canonical=None):
        self.sections, self.frozen = sections, frozen
        # flat values -> the same values spelled one way (e.g. variant "ur" -> "UR"), to compare them
        self.canonical = canonical or (lambda flat: flat)
        self.fields: dict[str, tuple[str, type, bool]] = {}  # name -> (section, base type, optional)
        for section, cls in sections.items():
            hints = typing.get_type_hints(cls)
            for f in fields(cls):
                tp, optional = hints[f.name], False
                args = typing.get_args(tp)
                if type(None) in args:
                    optional, tp = True, next(a for a in args if a is not type(None))
                assert f.name not in self.fields, f"duplicate config field {f.name}"
                self.fields[f.name] = (section, tp, optional)

    def coerce(self, name: str, value):
        """Check and convert one value to its field's type; raise ValueError naming the flag."""
        _, tp, optional = self.fields[name]
        if value is None or (optional and isinstance(value, str) and value.lower() == "none"):
            if optional:
                return None
            raise ValueError(f"{flag(name)} may not be None")
        if tp is bool:
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, bool):
                return value
        elif tp is int and not isinstance(value, bool):
            try:
                if float(value) == int(float(value)):
                    return int(float(value))
            except (TypeError, ValueError):
                pass
        elif tp is float and not isinstance(value, bool):
            try:
                return float(value)
            except (TypeError, ValueError):
                pass
        elif tp is str and isinstance(value, str):
            return value
        kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[tp]
        raise ValueError(f"{flag(name)} expects {kind}{' or none' if optional else ''}, got {value!r}")

    def add_flags(self, parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
        """One flag per field (but ``exclude``); defaults are suppressed so only given flags override."""
        for section, cls in self.sections.items():
            group = parser.add_argument_group(f"{section} ({cls.__doc__.splitlines()[0].replace('``', '')})")
            for f in fields(cls):
                if f.name in exclude:
                    continue
                tp = self.fields[f.name][1]
                default = f.default if f.default is not dataclasses.MISSING else None
                text = f.metadata.get("help", "")
                kw = {"dest": f.name, "default": argparse.SUPPRESS,
                      "help": f"{text} (default: {default})" if text else f"default: {default}"}
                choices = f.metadata.get("choices")
                if tp is bool:
                    group.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kw)
                elif choices:
                    names = choices() if callable(choices) else choices
                    group.add_argument(flag(f.name), metavar="{" + ",".join(names) + "}", **kw)
                else:
                    group.add_argument(flag(f.name), metavar=tp.__name__.upper(), **kw)

    def flatten(self, data: dict, source: str) -> dict:
        """A config nested by section (as ``config.json``) or flat, as flat fields."""
        flat = {}
        for key, value in data.items():
            if key in self.sections and isinstance(value, dict):
                flat.update(self.flatten(value, source))
            elif key.replace("-", "_") in self.fields:
                flat[key.replace("-", "_")] = value
            else:
                raise ValueError(f"{source}: unknown config field {key!r}; fields are {sorted(self.fields)}")
        return flat

    def load_file(self, path: str | Path) -> dict:
        """Read a JSON config file (nested by section, as ``config.json``, or flat) into flat fields."""
        if not Path(path).is_file():
            raise ValueError(f"config file {path} does not exist")
        return self.flatten(read_json(path), str(path))

    def resumed(self, run: Path, saved: dict, changes: dict) -> dict:
        """The flat values of ``run`` resumed with ``changes`` over its ``saved`` flat config;
        raise ValueError if a change touches a frozen section or names another ``--out``. A frozen
        value given again in another spelling (``--variant ur`` for ``UR``) is no change, and the
        saved spelling is kept (the checkpoint's fingerprint was computed from it)."""
        coerced = {k: self.coerce(k, v) for k, v in changes.items()}
        before, after = self.canonical(dict(saved)), self.canonical(saved | coerced)
        frozen = [k for k in changes if self.fields[k][0] in self.frozen and after[k] != before[k]]
        if frozen:
            raise ValueError(f"--resume cannot change what is trained ({', '.join(flag(k) for k in frozen)}); "
                             "start a new run with another --out")
        if "out" in changes and Path(changes["out"]) != run:
            raise ValueError("--out and --resume name different runs")
        kept = {k: v for k, v in changes.items() if self.fields[k][0] not in self.frozen}
        return saved | kept | {"out": str(run)}


def _model_label(name: str) -> tuple[str | None, str]:
    """``(core, variant part)`` of a model name as the tables print it (:func:`gated.harness.report.label`):
    ``"UR-LSTM"`` -> ``("lstm", "UR")``, ``"GRU"`` -> ``("gru", "")`` (``""`` is ``-``), ``"UR-minGRU"`` ->
    ``("mingru", "UR")``; a bare variant name gives ``(None, name)``."""
    import gated

    head, _, tail = name.strip().rpartition("-")
    return (tail.lower(), head) if tail.lower() in gated.CORES else (None, name)


def canonical_variant(name: str, core: str) -> str:
    """The registry label (``gated.get_variant(...).name``) of ``--variant name`` with ``--core core``.

    ``name`` is any spelling :func:`gated.get_variant` takes (``"ur"``, ``"uniform-refine"``, ``"UR-"``)
    or a model name as the tables print it (``"UR-LSTM"``; ``"LSTM"`` is ``-`` with lstm), whose core
    must then be ``core``. Raises ValueError naming the choices and the closest names; whether
    ``core`` supports the variant is :func:`validate`'s check.
    """
    import gated
    from gated.harness.report import label
    from gated.variants import did_you_mean

    named, part = _model_label(name)
    if named is not None and named != core:
        try:
            variant = gated.get_variant(part).name
        except ValueError:
            variant = None
        if variant is not None:
            raise ValueError(f"--variant {name!r} names the {named} core, but --core is {core!r}; use "
                             f"--variant {variant} (or {label(core, variant)}) with --core {core}, or --core {named}")
    try:
        return gated.get_variant(part).name
    except (ValueError, TypeError):
        pass
    supported = gated.CORES[core].variants if core in gated.CORES else tuple(gated.VARIANTS)
    names = [*supported, *(label(core, v) for v in supported)] if core in gated.CORES else list(supported)
    if len(name.strip()) > 2:  # "UX" is a label's typo; "unifrom" a long name's
        names += [gated.VARIANTS[v].long_name for v in supported]
    raise ValueError(f"unknown variant {name!r} for core {core!r}; choose from {', '.join(supported)}"
                     + did_you_mean(str(name), names))


def _canonical(flat: dict) -> dict:
    """``flat`` with its variant as the registry's label (for comparisons; raises on a bad name)."""
    if "variant" not in flat:
        return flat
    return flat | {"variant": canonical_variant(flat["variant"], flat.get("core", ModelConfig.core))}


SCHEMA = Schema(SECTIONS, FROZEN_SECTIONS, _canonical)
FIELDS = SCHEMA.fields
_coerce, add_flags, _flatten, load_file = SCHEMA.coerce, SCHEMA.add_flags, SCHEMA.flatten, SCHEMA.load_file


def build(*layers: dict) -> RunConfig:
    """Merge flat override dicts (later wins) over the dataclass and task defaults; validate, and
    store the variant as the registry's label (``ur``, ``uniform-refine``, ``UR-LSTM`` -> ``UR``)."""
    from gated.harness.tasks import get_task_spec

    merged: dict = {}
    for layer in layers:
        merged.update({k: _coerce(k, v) for k, v in _flatten(layer, "config").items()})
    spec = get_task_spec(merged.get("task", TaskConfig.task))
    values = {k: _coerce(k, v) for k, v in spec.defaults.items()} | merged
    named, _ = _model_label(values.get("variant", ModelConfig.variant))
    if named is not None and "core" not in merged:  # --variant UR-GRU without --core: the gru core
        values["core"] = named
    sections = {s: {} for s in SECTIONS}
    for name, value in values.items():
        sections[FIELDS[name][0]][name] = value
    cfg = RunConfig(**{s: SECTIONS[s](**kv) for s, kv in sections.items()})
    validate(cfg)
    return cfg


def from_dict(data: dict, canonical: bool = True) -> RunConfig:
    """Rebuild a config from ``config.json`` (no task defaults applied), with its variant as the
    registry's label (a run configured before labels were stored may hold ``"ur"``);
    ``canonical=False``: exactly as written (``--resume`` keeps the spelling its checkpoints'
    fingerprint was computed from)."""
    flat = {k: _coerce(k, v) for k, v in _flatten(data, "config.json").items()}
    sections = {s: {} for s in SECTIONS}
    for name, value in flat.items():
        sections[FIELDS[name][0]][name] = value
    cfg = RunConfig(**{s: SECTIONS[s](**kv) for s, kv in sections.items()})
    validate(cfg, canonical)
    return cfg


def _choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose from {', '.join(map(str, choices))}")


def validate(cfg: RunConfig, canonical: bool = True) -> None:
    """Raise ValueError (naming the flag and the valid choices) on any bad value; with
    ``canonical``, set the variant to the registry's label (:func:`canonical_variant`)."""
    import gated
    from gated.harness.tasks import get_task_spec

    get_task_spec(cfg.task.task)
    from gated.harness.model import CORE_MODULES

    _choice("core", cfg.model.core, sorted(set(gated.CORES) & set(CORE_MODULES)))
    supported = gated.CORES[cfg.model.core].variants
    variant = canonical_variant(cfg.model.variant, cfg.model.core)
    if variant not in supported:
        raise ValueError(f"unknown variant {cfg.model.variant!r} for core {cfg.model.core!r}; "
                         f"choose from {', '.join(supported)}")
    if canonical:
        cfg.model.variant = variant
    _choice("optimizer", cfg.optim.optimizer, OPTIMIZERS)
    _choice("schedule", cfg.optim.schedule, SCHEDULES)
    positive = ["delay", "length", "pixels_per_step", "bptt", "vocab_size", "hidden_size", "num_layers",
                "embed_size", "batch_size", "steps", "log_every"]
    non_negative = ["val_size", "warmup", "threads", "eval_every", "eval_batches", "ckpt_every", "seed"]
    flat = cfg.flat()
    for name in positive:
        if flat[name] <= 0:
            raise ValueError(f"{flag(name)} must be a positive integer, got {flat[name]}")
    for name in non_negative:
        if flat[name] < 0:
            raise ValueError(f"{flag(name)} must be >= 0, got {flat[name]}")
    for name in ["lr", "weight_decay", "clip"]:
        if not flat[name] >= 0 or flat[name] == float("inf"):
            raise ValueError(f"{flag(name)} must be a finite number >= 0, got {flat[name]}")
    if cfg.optim.lr == 0:
        raise ValueError("--lr must be > 0")
    if not 0 <= cfg.model.dropout < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {cfg.model.dropout}")
    if cfg.model.t_max is not None and cfg.model.t_max <= 2:
        raise ValueError(f"--t-max must be > 2, got {cfg.model.t_max}")
    opts = {k: getattr(cfg.model, k) for k in CELL_OPTIONS}
    try:  # the library's own checks (ranges, types, cores that take no options)
        gated.options.CellOptions.make(gated.CORES[cfg.model.core], **opts)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{', '.join(flag(k) for k, v in opts.items() if v)}: {e}") from None
    if cfg.model.forget_bias is not None:  # the initialiser says which variants it cannot serve
        try:
            gated.init.forget_bias_(CORE_MODULES[cfg.model.core](1, 4, variant=variant), cfg.model.forget_bias)
        except (ValueError, TypeError) as e:
            raise ValueError(f"--forget-bias with {cfg.model.core} variant {cfg.model.variant!r}: {e}") from None
    dev = cfg.train.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ValueError(f"unknown device {dev!r}; choose from auto, cpu, cuda, cuda:N")
