"""``gated rl train``: build -> (resume) -> rollout / update loop -> log, evaluate -> checkpoint.

Run directory, as ``gated train``: ``config.json``, ``task.json`` (env facts and the random
policy's return), ``metrics.jsonl`` and ``checkpoints/`` (:mod:`gated.harness.checkpoint`,
atomic). A record's ``step`` is the number of environment steps so far (the x axis of every
curve); ``update`` counts PPO updates.

Checkpoints are taken between updates and hold the weights, the optimizer, torch's RNG (action
sampling and minibatch order), the loop carry (core state, previous action/reward, episode
flags), the env pool (episode numbers and the current episodes' actions, replayed on resume) and
the episodes not yet logged, so a resumed run continues exactly as an uninterrupted one (a run
stopped before its first checkpoint starts again from update 0). The evaluation uses its own envs
and generator and touches none of that.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.distributions import Categorical

from gated.harness import checkpoint as ckpt
from gated.harness.config import choose_threads, machine_load
from gated.harness.files import append_jsonl, read_json, truncate_jsonl, write_json
from gated.harness.rl import ppo
from gated.harness.rl.agent import ActorCritic
from gated.harness.rl.config import RLConfig
from gated.harness.rl.envs import EVAL_SEED, LockstepEnvs, random_return


def prepare_run_dir(cfg: RLConfig, pool: LockstepEnvs, resume: bool) -> Path:
    run = ckpt.open_run(cfg, resume, "gated rl train")
    if not (run / "task.json").exists():
        info = {"task": pool.name, "kind": "rl", "main_metric": "return", "higher_is_better": True,
                "baseline": {"return": random_return(pool.name, cfg.train.eval_episodes)},
                "baseline_name": "random policy", "seq_len": pool.max_episode_steps, "threshold": None,
                "x_label": "environment steps", "band": "std"}
        write_json(run / "task.json", info)
    return run


@torch.no_grad()
def evaluate(agent, name: str, episodes: int) -> float:
    """Mean return of the sampled policy over the fixed evaluation episodes (one per env).

    Uses its own envs and ``torch.Generator``, so evaluating does not change the training run.
    """
    pool = LockstepEnvs(name, episodes, EVAL_SEED, stream=1)
    pool.reset()
    gen = torch.Generator().manual_seed(EVAL_SEED)
    carry = ppo.Carry.initial(agent, episodes)
    done, returns = torch.zeros(episodes, dtype=torch.bool), torch.zeros(episodes)
    while not done.all():
        logits, _, state = agent.step(torch.from_numpy(pool.obs.copy()), carry.prev_action, carry.prev_reward,
                                      carry.first, carry.state)
        action = torch.multinomial(Categorical(logits=logits).probs, 1, generator=gen).squeeze(-1)
        res = pool.step(action.numpy())
        for i, ret, _ in res.finished:
            if not done[i]:
                done[i], returns[i] = True, ret
        ended = torch.from_numpy(res.terminated | res.truncated)
        carry = ppo.Carry(torch.where(ended, 0, action), torch.where(ended, 0.0, torch.from_numpy(res.rewards)),
                          ended.float(), state)
    return float(returns.mean())


def train(cfg: RLConfig, resume: bool = False, log=print) -> dict:
    """Run (or continue) the RL experiment ``cfg`` describes; returns the last logged record."""
    threads = torch.get_num_threads()  # restored at the end: --threads holds for this run only
    try:
        return _train(cfg, resume, log)
    finally:
        torch.set_num_threads(threads)
        ckpt.close_run(cfg.train.out)


def _train(cfg: RLConfig, resume: bool, log) -> dict:
    tc = cfg.train
    threads, note = choose_threads(tc.threads, torch.get_num_threads(), *machine_load())  # 0: automatic
    torch.set_num_threads(threads)
    if note:
        log(note)
    pool = LockstepEnvs(cfg.task.env, cfg.ppo.num_envs, tc.seed, stream=0)
    run = prepare_run_dir(cfg, pool, resume)
    torch.manual_seed(tc.seed)
    agent = ActorCritic(pool.obs_size, pool.num_actions, cfg.model)
    opt = torch.optim.Adam(agent.parameters(), lr=cfg.ppo.lr, eps=1e-5)
    update, pending = 0, []  # pending: (return, length) of episodes not yet logged
    if resume and ckpt.has_checkpoint(run):
        c = ckpt.load(run, read_json(run / "config.json"))
        ckpt.load_model_state(agent, c.model, str(run))
        try:
            opt.load_state_dict(c.state["optimizer"])
            pool.load_state_dict(c.state["pool"])
            torch.set_rng_state(c.state["rng"])
            carry = ppo.Carry(**c.state["carry"])
            update, pending = c.step, [tuple(p) for p in c.state["pending"]]
        except (ValueError, KeyError, RuntimeError, TypeError, IndexError, AttributeError) as e:
            raise ckpt.CheckpointError(f"checkpoint in {run} cannot be restored: {e.__class__.__name__}: {e}") from None
    else:  # a new run, or one stopped before its first checkpoint: from update 0
        if resume:
            log(f"{run}: no checkpoint yet; starting from update 0")
        pool.reset()
        carry = ppo.Carry.initial(agent, cfg.ppo.num_envs)
    truncate_jsonl(run / "metrics.jsonl", "update", update)
    if update >= cfg.updates:
        log(f"{run}: already at update {update} (asked for {cfg.updates}); nothing to do")
        return {"update": update, "step": update * cfg.steps_per_update}
    log(f"{pool.name}: {sum(p.numel() for p in agent.parameters()):,} parameters, core {cfg.model.core} variant "
        f"{cfg.model.variant}; {cfg.updates} updates x {cfg.steps_per_update} env steps")
    bar = _progress(tc, cfg.updates, update)
    last: dict = {"update": update, "step": update * cfg.steps_per_update}
    tic, tic_update = time.perf_counter(), update
    while update < cfg.updates:
        rollout, carry, finished = ppo.collect(agent, pool, carry, cfg.ppo.rollout_len)
        pending += [(ret, length) for _, ret, length in finished]
        stats = ppo.update(agent, opt, rollout, cfg.ppo)
        update += 1
        is_last = update == cfg.updates
        is_eval = is_last or (tc.eval_every and update % tc.eval_every == 0)
        if update % tc.log_every == 0 or is_eval:
            rate = (update - tic_update) * cfg.steps_per_update / max(time.perf_counter() - tic, 1e-9)
            record = {"step": update * cfg.steps_per_update, "update": update, "env_steps": update * cfg.steps_per_update,
                      "episodes": len(pending)}
            if pending:
                record |= {"return": sum(r for r, _ in pending) / len(pending),
                           "episode_length": sum(n for _, n in pending) / len(pending)}
            record |= stats | {"env_steps_per_s": rate}
            if is_eval:
                record["val_return"] = evaluate(agent, pool.name, tc.eval_episodes)
                (bar.write if bar is not None else log)(_fmt(record))
            append_jsonl(run / "metrics.jsonl", record)
            pending, last, tic, tic_update = [], record, time.perf_counter(), update
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(_fmt(last), refresh=False)
        if is_last or (tc.ckpt_every and update % tc.ckpt_every == 0):
            state = {"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "carry": carry.state_dict(),
                     "pool": pool.state_dict(), "pending": [list(p) for p in pending]}
            ckpt.save(run, update, agent.state_dict(), state, cfg.to_dict())
    if bar is not None:
        bar.close()
    ckpt.mark_finished(run, update)  # after the last checkpoint: the results stand without them
    return last


def _fmt(record: dict) -> str:
    parts = [f"env steps {record.get('step', 0):,}"]
    for key in ("return", "val_return", "entropy"):
        if key in record:
            parts.append(f"{key} {record[key]:.3f}")
    return ", ".join(parts)


def _progress(tc, total: int, start: int):
    if not tc.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=None, unit="update", dynamic_ncols=True)
