"""Memory reinforcement learning with a gated recurrent core (Gu et al. 2020, §5.5 / our §10 notes).

The paper swaps the LSTM core of an IMPALA agent for each gate variant on DMLab's Passive and
Active Visual Match. This package is the small, CPU-sized analogue: a recurrent PPO actor-critic
whose core is any ``gated`` cell and variant, trained on MiniGrid-Memory and popgym card games.

    envs.py     environment registry, observation encoders, the vectorised ``LockstepEnvs``
    agent.py    ``ActorCritic``: encoder -> gated cell -> policy and value heads
    ppo.py      rollouts, GAE, recurrent replay with episode masks, the clipped PPO update
    config.py   ``RLConfig`` dataclasses and their flags
    train.py    ``gated rl train``: run directory, metrics, checkpoints, exact resume
    compare.py  ``gated rl compare``: variants x seeds x envs, table and figure
    cli.py      the ``gated rl`` subcommand table

Heavy dependencies (gymnasium, minigrid, popgym) are the ``rl`` extra and are imported lazily.
"""
