"""``python -m training experiment``: the paper's comparison end to end, on one fixed split.

    python -m training experiment --preset cpu-small --out runs/experiment
    python -m training experiment --preset paper --out runs/paper --model meta-llama/Llama-3.1-8B-Instruct \\
        --agent openai:http://gpu-a:8000/v1#meta-llama/Llama-3.1-8B-Instruct \\
        --simulator openai:http://gpu-b:8000/v1#meta-llama/Llama-3.1-70B-Instruct

Stages, in order (each writes into ``--out`` and, when finished, a marker ``stages/<name>.json``
with its wall time and summary; a re-run skips the finished stages, and the one that was running
when a run was killed continues from what it left: rollouts per episode, training from its
checkpoint):

1. ``split`` -- a fixed split of ``--tasks`` into training and held-out tasks per kind
   (``split.json``: the ids of each side, the seed, every source file with its SHA-256; the tasks
   themselves in ``tasks_train.jsonl`` and ``tasks_held_out.jsonl``);
2. ``rollouts`` -- the base agent and the simulator, K episodes per training task (``rollouts.jsonl``);
3. ``train_*`` -- from those same rollouts: SWEET-RL (critic, then actor), multi-turn DPO, RFT
   (``train/<method>/``);
4. ``eval_*`` -- zero-shot and every trained actor on the *same* held-out tasks, with the same
   seed, samples and simulator (``eval/<method>.jsonl``; the other scorer's verdicts on the same
   episodes in ``eval/<method>.<scorer>.jsonl``);
5. the critic studies: the ablations of the paper's Table 3 (critic without privileged
   information, with a value head, without length normalisation; each trains its own critic and
   an actor ranked by it) and critic best-of-N (paper Fig. 3a: the base agent with every turn
   picked by SWEET's critic -- a measure of the critic, reported apart, never as an agent's score).

After each evaluation, ``results.json``, ``results.md`` and ``results.png`` are written again from
what is finished: per task kind and scorer, each method's n, means, win rate against zero-shot and
the paired difference from zero-shot with its bootstrap 95% CI (``training.stats``: pairs by
(task, sample), tasks resampled), and the wall time of every stage.

Modules, in the order a run uses them:

* ``training.experiment.config``   the settings (``ExperimentConfig``, the ``paper`` preset), their checks,
  the command line that reproduces a run
* ``training.experiment.workdir``  where each stage writes in ``--out``; the markers of finished stages
* ``training.experiment.run``      the stages themselves and ``run_experiment``
* ``training.experiment.results``  ``results.json`` / ``results.md`` / ``results.png`` from what is finished

Only ``training.__main__`` (the ``experiment`` command) imports this package: it sits on top of the
trainers and the evaluation, and nothing in ``training`` depends on it.
"""

from training.experiment.config import PRESETS, ExperimentConfig, PaperExperimentConfig, command_line
from training.experiment.run import run_experiment

__all__ = ["PRESETS", "ExperimentConfig", "PaperExperimentConfig", "command_line", "run_experiment"]
