"""Recurrent PPO (Schulman et al. 2017): rollouts, GAE, and the clipped update over whole sequences.

Glossary: T rollout length (the truncated-BPTT chunk), N environments, F features, A actions,
S core states, H hidden_size.

A rollout is T steps of all N environments. Its first core state is stored (detached), and the
loss replays the chunk step by step from it with the same ``first`` masks the rollout used, so
replay reproduces the rollout's logits and values exactly before the first gradient step.
Minibatches are subsets of the environments, each a whole (T, n) sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Categorical


@dataclass
class Carry:
    """Loop state between rollouts: the previous action/reward, ``first`` flags, core state."""

    prev_action: Tensor  # (N,) long
    prev_reward: Tensor  # (N,)
    first: Tensor  # (N,) 1.0 where the current observation starts an episode
    state: Tensor  # (S, N, H) core state after the last step (not yet masked by ``first``)

    @classmethod
    def initial(cls, agent, n: int) -> Carry:
        return cls(torch.zeros(n, dtype=torch.long), torch.zeros(n), torch.ones(n), agent.initial_state(n))

    def state_dict(self) -> dict:
        return {"prev_action": self.prev_action, "prev_reward": self.prev_reward, "first": self.first,
                "state": self.state}


@dataclass
class Rollout:
    """T steps of N environments; every tensor is ``(T, N)`` unless noted."""

    obs: Tensor  # (T, N, F)
    prev_action: Tensor
    prev_reward: Tensor
    first: Tensor
    actions: Tensor
    logp: Tensor
    values: Tensor
    logits: Tensor  # (T, N, A), kept for the replay test
    rewards: Tensor
    terminated: Tensor  # bool
    truncated: Tensor  # bool (and not terminated)
    bootstrap: Tensor  # value of the final observation where truncated, else 0
    state0: Tensor  # (S, N, H) the chunk's initial core state (detached)
    next_value: Tensor  # (N,) value of the observation after the chunk


@torch.no_grad()
def collect(agent, pool, carry: Carry, steps: int) -> tuple[Rollout, Carry, list]:
    """Run the policy for ``steps`` steps in every env of ``pool``; actions use torch's global RNG.

    Returns the rollout, the carry for the next one, and ``(env, return, length)`` of every
    episode that ended.
    """
    buf = {k: [] for k in ("obs", "prev_action", "prev_reward", "first", "actions", "logp", "values", "logits",
                           "rewards", "terminated", "truncated", "bootstrap")}
    state0, finished = carry.state.clone(), []
    for _ in range(steps):
        obs = torch.from_numpy(pool.obs.copy())  # (N, F)
        logits, value, state = agent.step(obs, carry.prev_action, carry.prev_reward, carry.first, carry.state)
        dist = Categorical(logits=logits)
        action = dist.sample()  # (N,)
        res = pool.step(action.numpy())
        reward = torch.from_numpy(res.rewards)
        bootstrap = torch.zeros(len(reward))
        for i, final in res.final_obs.items():  # truncated: V(final obs), the state carried one step on
            _, v, _ = agent.step(torch.from_numpy(final)[None], action[i:i + 1], reward[i:i + 1], torch.zeros(1),
                                 state[:, i:i + 1])
            bootstrap[i] = v[0]
        for k, v in (("obs", obs), ("prev_action", carry.prev_action), ("prev_reward", carry.prev_reward),
                     ("first", carry.first), ("actions", action), ("logp", dist.log_prob(action)),
                     ("values", value), ("logits", logits), ("rewards", reward),
                     ("terminated", torch.from_numpy(res.terminated)), ("truncated", torch.from_numpy(res.truncated)),
                     ("bootstrap", bootstrap)):
            buf[k].append(v)
        done = torch.from_numpy(res.terminated | res.truncated)
        carry = Carry(torch.where(done, 0, action), torch.where(done, 0.0, reward), done.float(), state)
        finished += res.finished
    _, next_value, _ = agent.step(torch.from_numpy(pool.obs.copy()), carry.prev_action, carry.prev_reward,
                                  carry.first, carry.state)
    rollout = Rollout(**{k: torch.stack(v) for k, v in buf.items()}, state0=state0, next_value=next_value)
    return rollout, carry, finished


def gae(rewards: Tensor, values: Tensor, next_value: Tensor, terminated: Tensor, truncated: Tensor,
        bootstrap: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) with episode ends.

    The value after step t is 0 if the episode terminated there, ``bootstrap[t]`` (the value of
    the final observation) if it was truncated, else ``values[t + 1]`` (``next_value`` after the
    last step). Advantages do not flow across an episode end.

    Args:
        rewards, values, terminated, truncated, bootstrap: ``(T, N)``.
        next_value: ``(N,)``.
    Returns:
        ``advantages (T, N)`` and ``returns = advantages + values`` (the value targets).
    """
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        after = next_value if t == T - 1 else values[t + 1]
        after = torch.where(terminated[t], torch.zeros_like(after), torch.where(truncated[t], bootstrap[t], after))
        delta = rewards[t] + gamma * after - values[t]
        last = delta + gamma * lam * (~(terminated[t] | truncated[t])).float() * last
        adv[t] = last
    return adv, adv + values


def update(agent, opt, ro: Rollout, cfg) -> dict:
    """PPO epochs over the rollout; minibatches are sets of whole environment sequences.

    Args:
        cfg: a :class:`~gated.harness.rl.config.PPOConfig`.
    Returns the mean policy loss, value loss, entropy, approximate KL, clip fraction, grad norm.
    """
    adv, returns = gae(ro.rewards, ro.values, ro.next_value, ro.terminated, ro.truncated, ro.bootstrap,
                       cfg.gamma, cfg.gae_lambda)
    n = ro.actions.shape[1]
    stats: dict = {k: 0.0 for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac", "grad_norm")}
    count = 0
    for _ in range(cfg.epochs):
        for idx in torch.randperm(n).chunk(cfg.minibatches):
            logits, values, _ = agent.unroll(ro.obs[:, idx], ro.prev_action[:, idx], ro.prev_reward[:, idx],
                                             ro.first[:, idx], ro.state0[:, idx])
            dist = Categorical(logits=logits)
            logp = dist.log_prob(ro.actions[:, idx])  # (T, n)
            a = adv[:, idx]
            a = (a - a.mean()) / (a.std() + 1e-8)
            ratio = (logp - ro.logp[:, idx]).exp()
            clipped = ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)
            policy_loss = -torch.min(ratio * a, clipped * a).mean()
            value_loss = 0.5 * (values - returns[:, idx]).pow(2).mean()
            entropy = dist.entropy().mean()
            loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
            opt.step()
            with torch.no_grad():
                log_ratio = logp - ro.logp[:, idx]
                kl = ((ratio - 1) - log_ratio).mean()  # Schulman's low-variance KL estimator
                frac = ((ratio - 1).abs() > cfg.clip_coef).float().mean()
            for k, v in (("policy_loss", policy_loss), ("value_loss", value_loss), ("entropy", entropy),
                         ("approx_kl", kl), ("clip_frac", frac), ("grad_norm", norm)):
                stats[k] += float(v.detach())
            count += 1
    return {k: v / count for k, v in stats.items()}
