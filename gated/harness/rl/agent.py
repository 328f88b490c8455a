"""The recurrent actor-critic: observation encoder -> gated cell -> policy and value heads.

Glossary: T time, B batch (environments), F encoded observation features, E embedding,
A actions, S states per core (2 for LSTM (h, c), 1 for GRU/MGU), H hidden_size.

The core reads the observation embedding and, optionally (``prev_action``/``prev_reward``), the
previous action (one-hot) and reward, as IMPALA (Espeholt et al. 2018), whose LSTM core the paper
(§5.5) swaps for each gate variant, does. They are off by default: on these small tasks they are
memory outside the core (in RepeatFirst, "repeat the previous action" or "keep the action that was
rewarded" solves the task with no memory at all). The core is one ``gated`` cell, stepped once
per environment step, so rollout and the loss's replay run the very same operations.

Episode boundaries: ``first[b] = 1`` marks the first observation of an episode. :meth:`step`
multiplies the incoming state by ``1 - first`` before using it, so the state an episode starts
from is exactly zero, in the rollout and in the replay alike, and the previous action/reward
inputs of a first step are zero too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gated

CELLS = {"lstm": gated.LSTMCell, "gru": gated.GRUCell, "mgu": gated.MGUCell}


class ActorCritic(nn.Module):
    """Recurrent actor-critic with a ``gated`` core.

    Args:
        obs_size: F, the encoded observation width.
        num_actions: A.
        cfg: an :class:`~gated.harness.rl.config.AgentConfig` (core, variant, hidden_size,
            embed_size, t_max, prev_action, prev_reward).
    """

    def __init__(self, obs_size: int, num_actions: int, cfg):
        super().__init__()
        if cfg.core not in CELLS:
            raise ValueError(f"unknown core {cfg.core!r}; choose from {', '.join(CELLS)}")
        self.num_actions = num_actions
        self.encoder = nn.Sequential(nn.Linear(obs_size, cfg.embed_size), nn.ReLU())
        self.use_action, self.use_reward = bool(cfg.prev_action), bool(cfg.prev_reward)
        in_size = cfg.embed_size + num_actions * self.use_action + self.use_reward
        self.core = CELLS[cfg.core](in_size, cfg.hidden_size, variant=cfg.variant, t_max=cfg.t_max)
        self.num_states = 2 if cfg.core == "lstm" else 1
        self.hidden_size = cfg.hidden_size
        self.policy = nn.Linear(cfg.hidden_size, num_actions)
        self.value = nn.Linear(cfg.hidden_size, 1)

    def initial_state(self, batch: int) -> Tensor:
        """Zeros ``(S, B, H)``."""
        return torch.zeros(self.num_states, batch, self.hidden_size)

    def step(self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, first: Tensor,
             state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One environment step for B environments.

        Args:
            obs: ``(B, F)`` encoded observations.
            prev_action: ``(B,)`` long, the action taken before ``obs`` (zeroed where ``first``;
                read only if the agent was built with ``prev_action``).
            prev_reward: ``(B,)`` the reward received with ``obs`` (likewise, ``prev_reward``).
            first: ``(B,)`` float, 1 where ``obs`` starts an episode.
            state: ``(S, B, H)`` the core state after the previous step.
        Returns:
            ``logits (B, A)``, ``value (B,)`` and the new state ``(S, B, H)``.
        """
        keep = 1.0 - first  # (B,)
        state = state * keep.view(1, -1, 1)  # zero exactly where an episode starts
        parts = [self.encoder(obs)]  # (B, E)
        if self.use_action:
            parts.append(F.one_hot(prev_action, self.num_actions).float() * keep[:, None])  # (B, A)
        if self.use_reward:
            parts.append((prev_reward * keep)[:, None])  # (B, 1)
        x = torch.cat(parts, dim=-1)  # (B, E [+ A] [+ 1])
        if self.num_states == 2:
            h, c = self.core(x, (state[0], state[1]))
            new = torch.stack((h, c))  # (2, B, H)
        else:
            new = self.core(x, state[0]).unsqueeze(0)  # (1, B, H)
        return self.policy(new[0]), self.value(new[0]).squeeze(-1), new

    def unroll(self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, first: Tensor,
               state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`step` over a chunk: inputs ``(T, B, ·)``, ``state`` the chunk's initial state.

        Returns ``logits (T, B, A)``, ``values (T, B)`` and the final state; gradients flow
        through the whole chunk (truncated BPTT: the caller passes a detached initial state).
        """
        logits, values = [], []
        for t in range(obs.shape[0]):
            lg, v, state = self.step(obs[t], prev_action[t], prev_reward[t], first[t], state)
            logits.append(lg)
            values.append(v)
        return torch.stack(logits), torch.stack(values), state
