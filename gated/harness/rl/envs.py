"""Environments: the registry of memory tasks, observation encoders, and ``LockstepEnvs``.

Glossary: N environments, F encoded observation features, A actions.

``LockstepEnvs`` steps N gymnasium environments in lockstep (a synchronous vector env written out so
that three things are explicit rather than hidden in an autoreset mode):

- every episode starts from ``reset(seed=s)`` with ``s`` a function of (run seed, stream, env
  index, episode number), so episodes are reproducible and independent of how the run was split;
- a truncated episode hands back its final observation, to bootstrap the value from;
- the pool's state is the episode numbers plus the actions taken so far in each current episode,
  so a checkpoint restores an env mid-episode by replaying those actions after the seeded reset
  (exact for any env whose randomness comes from its ``np_random``, the gymnasium convention;
  the restored observation is checked against the saved one).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MINIGRID_CHANNELS = (11, 6, 3)  # minigrid.core.constants: objects, colours, door states
SUPPORTED = ("Discrete, MultiDiscrete, MultiBinary, Box, Tuple/Dict of those, "
             "and MiniGrid's Dict(image, direction, mission)")
EVAL_SEED = 2_147_483_647  # evaluation episodes do not depend on the run's seed: one set for all runs


def _gym():
    """Import gymnasium and register minigrid's and popgym's environments (the ``rl`` extra)."""
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # minigrid pulls in pygame-ce
    try:
        import gymnasium
    except ModuleNotFoundError:
        from gated.harness.status import install_hint

        raise ValueError(f"gated rl needs gymnasium (and minigrid / popgym for the memory tasks): {install_hint('rl')}"
                         ) from None
    for name in ("minigrid", "popgym"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            pass
    return gymnasium


def memory_envs() -> list[str]:
    """Installed memory environments: MiniGrid-Memory* and every popgym task."""
    gym = _gym()
    return sorted(k for k in gym.registry if k.startswith(("MiniGrid-Memory", "popgym-")))


def resolve_env_id(name: str) -> str:
    """A registered gymnasium id for ``name``; popgym class names (``RepeatFirstEasy``) are accepted.

    Raises:
        ValueError: unknown id, listing the installed memory environments.
    """
    gym = _gym()
    for candidate in (name, f"popgym-{name}-v0"):
        if candidate in gym.registry:
            return candidate
    installed = memory_envs()
    if not installed:
        from gated.harness.status import install_hint

        listing = f"none (for minigrid and popgym, {install_hint('rl')})"
    else:
        listing = ", ".join(installed)
    raise ValueError(f"unknown environment {name!r}; installed memory environments: {listing}")


def make_env(name: str):
    """``gymnasium.make`` of a resolved id."""
    return _gym().make(resolve_env_id(name))


Encoder = Callable[[object], np.ndarray]


def make_encoder(space) -> tuple[int, Encoder]:
    """A fixed (parameter-free) map from observations of ``space`` to ``(F,)`` float32 vectors.

    Discrete parts become one-hot, Box parts are flattened (uint8 scaled to [0, 1]), and a
    MiniGrid image is one-hot per channel (object, colour, state) with the direction one-hot;
    MiniGrid's ``mission`` text is dropped (it is constant in the Memory tasks).

    Raises:
        ValueError: the space (or a part of it) is not one the agent can encode.
    """
    spaces = _gym().spaces
    if isinstance(space, spaces.Dict) and _is_minigrid(space, spaces):
        return _minigrid_encoder(space)
    if isinstance(space, spaces.Discrete):
        n, start = int(space.n), int(space.start)
        eye = np.eye(n, dtype=np.float32)
        return n, lambda o: eye[int(o) - start]
    if isinstance(space, spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec).ravel()
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
        size = int(nvec.sum())

        def multi(o):
            out = np.zeros(size, dtype=np.float32)
            out[offsets + (np.asarray(o).ravel() - np.asarray(space.start).ravel())] = 1.0
            return out
        return size, multi
    if isinstance(space, spaces.MultiBinary):
        return int(np.prod(space.shape)), lambda o: np.asarray(o, dtype=np.float32).ravel()
    if isinstance(space, spaces.Box):
        scale = 1 / 255 if space.dtype == np.uint8 else 1.0
        return int(np.prod(space.shape)), lambda o: np.asarray(o, dtype=np.float32).ravel() * scale
    if isinstance(space, (spaces.Tuple, spaces.Dict)):
        keys = list(space.spaces) if isinstance(space, spaces.Dict) else list(range(len(space.spaces)))
        parts = [make_encoder(space.spaces[k]) for k in keys]
        return sum(s for s, _ in parts), lambda o: np.concatenate([f(o[k]) for k, (_, f) in zip(keys, parts)])
    raise ValueError(f"observation space {space} cannot be encoded by the agent; supported: {SUPPORTED}")


def _is_minigrid(space, spaces) -> bool:
    image = space.spaces.get("image")
    return (isinstance(image, spaces.Box) and image.dtype == np.uint8 and len(image.shape) == 3
            and image.shape[-1] == 3 and isinstance(space.spaces.get("direction"), spaces.Discrete))


def _minigrid_encoder(space) -> tuple[int, Encoder]:
    h, w, _ = space["image"].shape
    eyes = [np.eye(n, dtype=np.float32) for n in MINIGRID_CHANNELS]
    directions = int(space["direction"].n)
    eye_dir = np.eye(directions, dtype=np.float32)

    def encode(o):
        img = o["image"]  # (h, w, 3) ints
        onehot = np.concatenate([eye[img[..., k]] for k, eye in enumerate(eyes)], axis=-1)  # (h, w, 20)
        return np.concatenate([onehot.ravel(), eye_dir[int(o["direction"])]])
    return h * w * sum(MINIGRID_CHANNELS) + directions, encode


@dataclass
class StepResult:
    """What one ``LockstepEnvs.step`` returns; arrays are ``(N,)``."""

    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    final_obs: dict  # env index -> encoded final observation of a truncated (not terminated) episode
    finished: list  # (env index, return, length) of the episodes that ended in this step


class LockstepEnvs:
    """N environments stepped in lockstep, reset automatically, seeded per episode.

    Args:
        name: an environment id (see :func:`resolve_env_id`).
        num_envs: N.
        seed: the run seed; episode ``k`` of env ``i`` starts from ``reset(seed=f(seed, stream, i, k))``.
        stream: separates training (0) from evaluation (1) episodes.
    Attributes:
        obs: ``(N, F)`` float32, the current (encoded) observation of every env.
    """

    def __init__(self, name: str, num_envs: int, seed: int, stream: int = 0):
        self.name = resolve_env_id(name)
        self.envs = [make_env(self.name) for _ in range(num_envs)]
        self.seed, self.stream = int(seed), int(stream)
        action_space = self.envs[0].action_space
        if not isinstance(action_space, _gym().spaces.Discrete):
            raise ValueError(  # noqa: TRY004 (the CLI reports ValueError as a usage error)
                f"{self.name}: action space {action_space} is not supported; the agent needs Discrete actions")
        self.num_actions = int(action_space.n)
        self.obs_size, self.encode = make_encoder(self.envs[0].observation_space)
        self.max_episode_steps = self._episode_cap(self.envs[0])
        self.obs = np.zeros((num_envs, self.obs_size), dtype=np.float32)
        self.episodes = [0] * num_envs  # episodes started per env
        self.history: list[list[int]] = [[] for _ in range(num_envs)]  # actions of the current episodes
        self.returns = [0.0] * num_envs

    @staticmethod
    def _episode_cap(env) -> int | None:
        if env.spec is not None and env.spec.max_episode_steps:
            return int(env.spec.max_episode_steps)
        inner = env.unwrapped
        for attr in ("max_steps", "max_episode_length", "episode_length"):  # minigrid, popgym
            if isinstance(getattr(inner, attr, None), int):
                return int(getattr(inner, attr))
        return None

    def episode_seed(self, i: int, k: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.stream, i, k]).generate_state(1)[0])

    def _reset(self, i: int):
        obs, _ = self.envs[i].reset(seed=self.episode_seed(i, self.episodes[i]))
        self.episodes[i] += 1
        self.history[i], self.returns[i] = [], 0.0
        return obs

    def reset(self) -> np.ndarray:
        for i in range(len(self.envs)):
            self.obs[i] = self.encode(self._reset(i))
        return self.obs

    def step(self, actions) -> StepResult:
        n = len(self.envs)
        res = StepResult(np.zeros(n, np.float32), np.zeros(n, bool), np.zeros(n, bool), {}, [])
        for i, (env, a) in enumerate(zip(self.envs, actions, strict=True)):
            obs, r, term, trunc, _ = env.step(int(a))
            self.history[i].append(int(a))
            self.returns[i] += float(r)
            res.rewards[i], res.terminated[i], res.truncated[i] = r, term, trunc and not term
            if term or trunc:
                res.finished.append((i, self.returns[i], len(self.history[i])))
                if res.truncated[i]:
                    res.final_obs[i] = self.encode(obs)
                obs = self._reset(i)
            self.obs[i] = self.encode(obs)
        return res

    def state_dict(self) -> dict:
        """Plain lists (checkpoint ``state.pt`` is loaded with ``weights_only=True``)."""
        return {"name": self.name, "episodes": list(self.episodes), "history": [list(h) for h in self.history],
                "returns": list(self.returns), "obs": self.obs.tolist()}

    def load_state_dict(self, state: dict) -> None:
        """Restore every env mid-episode: the seeded reset of its current episode, then its actions.

        Raises:
            RuntimeError: the replay does not reproduce the saved observation (a non-deterministic env).
        """
        if state["name"] != self.name or len(state["episodes"]) != len(self.envs):
            raise RuntimeError(f"env state is for {len(state['episodes'])} x {state['name']}, "
                               f"not {len(self.envs)} x {self.name}")
        for i, env in enumerate(self.envs):
            self.episodes[i] = state["episodes"][i] - 1
            obs = self._reset(i)
            for a in state["history"][i]:
                obs, _, term, trunc, _ = env.step(a)
                if term or trunc:
                    raise RuntimeError(f"{self.name} env {i}: the replayed episode ended early (non-deterministic env)")
            self.history[i], self.returns[i] = list(state["history"][i]), float(state["returns"][i])
            self.obs[i] = self.encode(obs)
        if not np.array_equal(self.obs, np.asarray(state["obs"], dtype=np.float32)):
            raise RuntimeError(f"{self.name}: replaying the saved actions did not reproduce the saved observations")


def random_return(name: str, episodes: int, seed: int = EVAL_SEED) -> float:
    """Mean return of the uniform random policy over ``episodes`` evaluation episodes (one per env)."""
    pool = LockstepEnvs(name, episodes, seed, stream=1)
    pool.reset()
    rng = np.random.default_rng(seed)
    done, returns = np.zeros(episodes, bool), np.zeros(episodes)
    while not done.all():
        res = pool.step(rng.integers(0, pool.num_actions, size=episodes))
        for i, ret, _ in res.finished:
            if not done[i]:
                done[i], returns[i] = True, ret
    return float(returns.mean())
