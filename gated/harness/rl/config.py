"""``RLConfig``: four dataclasses, one flag per field (``hidden_size`` is ``--hidden-size``).

The section names follow ``gated train``'s ``config.json`` (``task``, ``model``, ``train``) so the
checkpoint fingerprint and the comparison tools read RL runs unchanged; ``ppo`` holds the
algorithm's hyper-parameters. Values come from the dataclass defaults, then a JSON file
(``--config``), then flags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from gated.harness.config import Schema, _f, flag, variant_names


@dataclass
class EnvConfig:
    """The environment (a gymnasium id; popgym class names such as RepeatFirstEasy work too)."""

    env: str = _f("popgym-RepeatFirstEasy-v0", "environment id; an unknown one lists the installed memory envs")


@dataclass
class AgentConfig:
    """The actor-critic: observation embedding, a gated core, linear policy and value heads."""

    core: str = _f("lstm", "the recurrent core (a gated cell)", ("lstm", "gru", "mgu"))
    variant: str = _f("UR", "a gate variant the core supports (gated.CORES[core].variants)", variant_names)
    hidden_size: int = _f(64, "core state width H")
    embed_size: int = _f(64, "observation embedding width")
    t_max: float | None = _f(None, "chrono (C) variant: longest timescale; None: the library default")
    prev_action: bool = _f(False, "feed the previous action to the core (IMPALA does; off: it is external memory)")
    prev_reward: bool = _f(False, "feed the previous reward to the core (IMPALA does; off: it leaks RepeatFirst's answer)")


@dataclass
class PPOConfig:
    """Recurrent PPO: rollout (truncated-BPTT chunk), GAE and the clipped objective."""

    num_envs: int = _f(16, "environments stepped in lockstep")
    rollout_len: int = _f(64, "steps per env per update; also the truncated-BPTT length")
    lr: float = _f(1e-3, "Adam learning rate (constant)")
    gamma: float = _f(0.99, "discount")
    gae_lambda: float = _f(0.95, "GAE lambda")
    clip_coef: float = _f(0.2, "PPO ratio clip")
    epochs: int = _f(4, "passes over each rollout")
    minibatches: int = _f(4, "minibatches per pass (sets of whole env sequences); divides num_envs")
    ent_coef: float = _f(0.01, "entropy bonus")
    vf_coef: float = _f(0.5, "value-loss weight")
    max_grad_norm: float = _f(0.5, "gradient-norm clipping")


@dataclass
class RLTrainConfig:
    """The loop: budget in environment steps, seed, logging, evaluation, checkpoints."""

    steps: int = _f(200_000, "environment steps (all envs together); rounded up to whole updates")
    seed: int = _f(0, "seeds weights, action sampling and the training episodes")
    out: str | None = _f(None, "run directory (config.json, metrics.jsonl, checkpoints/)")
    threads: int = _f(0, "torch CPU threads; 0: automatic, as gated train's --threads 0 (torch's default, lowered "
                      "to the cores the load average leaves free)")
    log_every: int = _f(1, "updates between metrics.jsonl records")
    eval_every: int = _f(0, "updates between evaluations; 0: only at the end")
    eval_episodes: int = _f(32, "episodes per evaluation (a fixed set shared by every run)")
    ckpt_every: int = _f(20, "updates between checkpoints; the last update is always saved")
    progress: bool = _f(True, "progress bar (on a terminal)")


SECTIONS = {"task": EnvConfig, "model": AgentConfig, "ppo": PPOConfig, "train": RLTrainConfig}
FROZEN_SECTIONS = ("task", "model", "ppo")  # what is trained; --resume may not change these


@dataclass
class RLConfig:
    task: EnvConfig = field(default_factory=EnvConfig)
    model: AgentConfig = field(default_factory=AgentConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    train: RLTrainConfig = field(default_factory=RLTrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def flat(self) -> dict:
        return {k: v for section in self.to_dict().values() for k, v in section.items()}

    @property
    def steps_per_update(self) -> int:
        return self.ppo.num_envs * self.ppo.rollout_len

    @property
    def updates(self) -> int:
        return -(-self.train.steps // self.steps_per_update)


SCHEMA = Schema(SECTIONS, FROZEN_SECTIONS)
FIELDS = SCHEMA.fields
coerce, add_flags, flatten, load_file = SCHEMA.coerce, SCHEMA.add_flags, SCHEMA.flatten, SCHEMA.load_file


def build(*layers: dict) -> RLConfig:
    """Merge flat override dicts (later wins) over the defaults, then validate."""
    values: dict = {}
    for layer in layers:
        values.update({k: coerce(k, v) for k, v in flatten(layer, "config").items()})
    sections: dict = {s: {} for s in SECTIONS}
    for name, value in values.items():
        sections[FIELDS[name][0]][name] = value
    cfg = RLConfig(**{s: SECTIONS[s](**kv) for s, kv in sections.items()})
    validate(cfg)
    return cfg


def validate(cfg: RLConfig) -> None:
    """Raise ValueError (naming the flag) on any bad value; env ids are checked when envs are made."""
    import gated
    from gated.harness.rl.agent import CELLS

    m = cfg.model
    if m.core not in CELLS:
        raise ValueError(f"unknown core {m.core!r}; choose from {', '.join(CELLS)}")
    try:
        variant = gated.get_variant(m.variant).name
    except ValueError:
        variant = None
    supported = gated.CORES[m.core].variants
    if variant not in supported:
        raise ValueError(f"unknown variant {m.variant!r} for core {m.core!r}; choose from {', '.join(supported)}")
    flat = cfg.flat()
    for name in ("hidden_size", "embed_size", "num_envs", "rollout_len", "epochs", "minibatches", "steps",
                 "log_every", "eval_episodes"):
        if flat[name] <= 0:
            raise ValueError(f"{flag(name)} must be a positive integer, got {flat[name]}")
    for name in ("seed", "threads", "eval_every", "ckpt_every"):
        if flat[name] < 0:
            raise ValueError(f"{flag(name)} must be >= 0, got {flat[name]}")
    if cfg.ppo.num_envs % cfg.ppo.minibatches:
        raise ValueError(f"--minibatches {cfg.ppo.minibatches} must divide --num-envs {cfg.ppo.num_envs}")
    for name in ("gamma", "gae_lambda"):
        if not 0 <= flat[name] <= 1:
            raise ValueError(f"{flag(name)} must be in [0, 1], got {flat[name]}")
    for name in ("lr", "clip_coef", "max_grad_norm"):
        if not 0 < flat[name] < float("inf"):
            raise ValueError(f"{flag(name)} must be a finite number > 0, got {flat[name]}")
    for name in ("ent_coef", "vf_coef"):
        if not 0 <= flat[name] < float("inf"):
            raise ValueError(f"{flag(name)} must be a finite number >= 0, got {flat[name]}")
    if m.t_max is not None and m.t_max <= 2:
        raise ValueError(f"--t-max must be > 2, got {m.t_max}")


def from_dict(data: dict) -> RLConfig:
    """Rebuild a config from ``config.json``."""
    return build(data)
