"""SWEET-RL training (Zhou et al. 2025, arXiv 2503.15478) for collab-rl agents.

* ``training.sweet``      the paper's equations: advantage (Eq. 3), Bradley–Terry (Eq. 2), actor DPO + NLL (Eq. 4)
* ``training.data``       episodes from the session database / sweet_rl JSONL, pairs, turn records, token layout
* ``training.critic``     the step-level critic with training-time information (§4.2)
* ``training.actor``      best-of-N sampling, critic ranking, turn-level DPO of the actor (§4.3)
* ``training.baselines``  rejection fine-tuning and multi-turn DPO
* ``training.evaluate``   rollouts + metrics + win rate; best-of-N by a critic
* ``training.iteration``  one full iteration (``training loop``) ending in a new version in ``simulators.llm.registry``
* ``training.stats``      paired bootstrap CIs of differences, the promotion gate
* ``training.experiment`` the paper's comparison end to end (zero-shot vs SWEET-RL vs baselines)

What every trainer shares:

* ``training.options``    ``TrainOptions``: optimiser, schedule, LoRA and checkpoint settings
* ``training.models``     the trainable policy: base weights + LoRA, its tokenizer; model spec -> weights
* ``training.logprobs``   per-token log-probs of scored positions; the frozen reference's cached log-probs
* ``training.trainer``    the optimisation loop (``optimise``), checkpoints, a finished run's files
* ``training.memory``     glibc allocator tuning for training on CPU

Run ``python -m training --help``; docs/TRAINING.md explains each command.
"""

# What ``training loop`` (and so the app's Train tab) can run: SWEET-RL and the paper's two baselines.
ALGORITHMS = {"sweet": "SWEET-RL", "mtdpo": "Multi-turn DPO", "rft": "Rejection fine-tuning"}
