"""Train tab: logged sessions -> a new actor version -> evaluated -> promoted, without a restart."""

from __future__ import annotations

import gradio as gr

from collab_app.commands.models import version_rows
from collab_app.context import AppContext
from collab_app.notices import notice_box, reports_to
from collab_app.training_jobs import TrainRequest
from simulators.llm.registry import ModelRegistry, RegistryError
from simulators.llm.specs import FOLLOW_REGISTRY
from simulators.store import SESSION_MODES
from training import ALGORITHMS
from training.stats import MIN_TASKS, PairedDifference

ANY = "any"
VERSION_COLUMNS = ["version", "current", "parent", "algorithm", "created", "new reward", "parent reward",
                   "paired gain (95% CI)", "gate"]
VERDICT_MARKS = {"promote": "✅", "underpowered": "⚠️", "no gain": "✖"}


def evaluation_markdown(status: dict | None) -> str:
    """The gate: the new version and its parent on the same held-out tasks and samples.

    Leads with the gate's verdict and the paired difference with its 95% CI and n (what the
    decision rests on); the two means follow, side by side.
    """
    version = (status or {}).get("version")
    if not version:
        return ""
    evaluation = version.get("evaluation", {})
    new, parent = evaluation.get("new", {}), evaluation.get("parent", {})
    keys = sorted({k for k in (*new, *parent) if isinstance(new.get(k, parent.get(k)), (int, float))})
    lines = [f"### Evaluation gate · {version.get('version')} vs its parent ({evaluation.get('tasks', '?')} tasks)"]
    decision = evaluation.get("gate")
    if decision:
        lines += [f"**{VERDICT_MARKS.get(decision['verdict'], '')} {decision['verdict']}** — {decision['reason']}", "",
                  f"Paired {decision.get('metric', 'reward')} difference, new − parent (same task, same sample): "
                  f"**{gain_with_ci(decision)}**", ""]
    lines += ["| metric | new | parent |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(new.get(k))} | {_fmt(parent.get(k))} |" for k in keys]
    if "win_rate" in evaluation:
        lines.append(f"\nWin rate of the new version: **{_fmt(evaluation['win_rate'])}**")
    if version.get("promoted"):
        lines.append("\n✅ promoted: new sessions use it now")
    elif decision and decision["promote"]:
        lines.append("\nThe gate would promote it; automatic promotion was off (“Promote this version” applies it).")
    return "\n".join(lines)


def gain_with_ci(decision: dict | None) -> str:
    """``+0.125 (95% CI [-0.050, 0.300], n=16 over 8 tasks)`` from a stored gate decision; "–" without one."""
    difference = (decision or {}).get("difference")
    return PairedDifference(**difference).describe() if difference else "–"


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "–" if value is None else str(value)


def status_markdown(status: dict | None) -> str:
    if not status:
        return "No training run yet."
    done = ", ".join(status["stages_done"]) or "none"
    text = (f"**{status['run']}** ({status.get('algorithm', 'sweet')}) · {status['state']} · "
            f"stage: `{status['stage']}` · done: {done}")
    if status.get("error"):  # the reason, not only in the collapsed run log
        text += f"\n\n⚠ **The run failed:** `{status['error']}` (the run log below has the rest)"
    if status["last_log"]:
        row = status["last_log"][-1]
        text += "\n\nlatest: " + " · ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k != "time")
    return text


def build_train_tab(ctx: AppContext, tab: gr.Tab) -> None:
    registry = ModelRegistry()
    gr.Markdown("Train a new actor on the sessions stored here, evaluate it against the version it "
                "started from, and promote it: new sessions use it at once; sessions in progress keep "
                "their version.")
    with gr.Row():
        with gr.Column():
            gr.Markdown("#### Data")
            kind = gr.Dropdown([ANY, "backend", "frontend"], value=ANY, label="Task kind")
            scored_modes = [m for m in SESSION_MODES if m != "chat"]  # chat sessions have no score to train on
            mode = gr.Dropdown([ANY, *scored_modes], value=ANY, label="Sessions played by")
            since = gr.Number(value=0, label="Only the last N days (0 = all)", minimum=0)
            minimum = gr.Number(value=4, label="Minimum number of scored sessions", precision=0, minimum=1,
                                info="What each algorithm learns from: SWEET-RL and multi-turn DPO need a task "
                                     "with two scored sessions of different rewards (a pair); rejection "
                                     "fine-tuning a successful session. The check runs before a run starts.")
            actor_pairs = gr.Checkbox(value=True, label="People's turn-level preferences (edits, liked "
                                      "regenerations, votes) train the actor")
            critic_pairs = gr.Checkbox(value=False, label="…and supervise the critic (SWEET)")
        with gr.Column():
            gr.Markdown("#### Algorithm")
            algorithm = gr.Radio([(name, key) for key, name in ALGORITHMS.items()],
                                 value="sweet", label="Algorithm", elem_id="train-algorithm")
            best_of_n = gr.Slider(2, 16, value=4, step=1, label="Best-of-N candidates per turn (SWEET)")
            critic_epochs = gr.Slider(1, 8, value=2, step=1, label="Critic epochs (SWEET)")
            eval_limit = gr.Slider(1, 50, value=8, step=1,
                                   label=f"Held-out evaluation tasks (the gate promotes on {MIN_TASKS} at least)")
            eval_rounds = gr.Slider(1, 10, value=3, step=1, label="Rounds per evaluation episode")
            eval_samples = gr.Slider(1, 8, value=2, step=1, label="Evaluation episodes per task and model "
                                     "(paired: same seeds for both)")
            max_new_tokens = gr.Slider(32, 1024, value=128, step=32, label="Longest agent turn (tokens)")
        with gr.Column():
            gr.Markdown("#### Promotion")
            auto_promote = gr.Checkbox(value=False, label="Promote automatically when the gate says “promote”")
            margin = gr.Number(value=0.0, label="…when the 95% CI of the paired reward gain lies above this")
            continuous = gr.Number(value=0, precision=0, minimum=0,
                                   label="Continuous mode: retrain after every N new scored sessions (0 = off)")
    with gr.Row():
        start_btn = gr.Button("Start training", variant="primary", elem_id="train-start")
        cancel_btn = gr.Button("Cancel", elem_id="train-cancel")
        resume_btn = gr.Button("Resume interrupted run")
    notice = notice_box("train-notice")
    status = gr.Markdown(elem_id="train-status")
    evaluation = gr.Markdown(elem_id="train-evaluation")
    with gr.Row():
        promote_btn = gr.Button("Promote this version", variant="primary", elem_id="train-promote")
        rollback_to = gr.Dropdown(label="Roll back to", choices=["base"], allow_custom_value=True, elem_id="rollback-to")
        rollback_btn = gr.Button("Roll back", elem_id="train-rollback")
    # Shown once a run has drawn its curves: an empty picture frame only asks what is missing.
    curves = gr.Gallery(label="Loss and accuracy curves", columns=3, height=260, visible=False, elem_id="train-curves")
    with gr.Accordion("Run log", open=False):
        log = gr.Code(label="process output", lines=12, interactive=False)
    versions = gr.Dataframe(headers=VERSION_COLUMNS, interactive=False, label="Model versions", elem_id="train-versions")
    versions_note = gr.Markdown(elem_id="train-versions-note")
    timer = gr.Timer(2.0)

    def refresh():
        job = ctx.training.job
        state = job.status() if job else None
        rows = []
        for r in version_rows(registry):
            evaluation = r["metrics"].get("evaluation", {})
            decision = evaluation.get("gate")
            rows.append([r["version"], "✓" if r["current"] else "", r["parent"] or "", r["algorithm"] or "",
                         r["created"], _fmt(evaluation.get("new", {}).get("reward")),
                         _fmt(evaluation.get("parent", {}).get("reward")), gain_with_ci(decision),
                         decision["verdict"] if decision else "–"])
        choices = ["base"] + [r[0] for r in rows]
        curve_files = [str(p) for p in job.curves()] if job else []
        return (status_markdown(state), evaluation_markdown(state), gr.update(value=curve_files, visible=bool(curve_files)),
                job.process_log_tail() if job else "", rows, gr.update(choices=choices),
                gr.update(interactive=promotable(state)), versions_markdown(rows))

    def versions_markdown(rows: list) -> str:
        if rows:
            return ""
        note = "**No trained version yet.** Every run adds a row here, with its evaluation against its parent. "
        if ctx.config.model == FOLLOW_REGISTRY:
            return note + f"Until one is promoted, new sessions use the base model (`{ctx.config.base}`)."
        return note + (f"This app serves `{ctx.config.model}` (its `--model`): a promoted version serves the "
                       "apps started with `--model current`.")

    def promotable(state: dict | None) -> bool:
        """A finished run's version that does not serve yet."""
        version = ((state or {}).get("version") or {}).get("version")
        current = registry.current()
        return bool(version) and (current is None or current.id != version)

    outputs = [status, evaluation, curves, log, versions, rollback_to, promote_btn, versions_note]
    reported = reports_to(notice)  # a refusal says why beside the buttons, as Gradio's error badge would not

    @reported
    def start(kind_v, mode_v, since_v, min_v, algo, n, epochs, limit, tokens, auto, margin_v, every,
              actor_pairs_v, critic_pairs_v, eval_rounds_v, eval_samples_v):
        request = TrainRequest(algorithm=algo, kind="" if kind_v == ANY else kind_v,
                               mode="" if mode_v == ANY else mode_v, since_days=float(since_v or 0),
                               min_sessions=int(min_v or 1), best_of_n=int(n), critic_epochs=int(epochs),
                               eval_limit=int(limit), max_new_tokens=int(tokens),
                               promote_margin=float(margin_v or 0) if auto else None,
                               actor_human_pairs=bool(actor_pairs_v), critic_human_pairs=bool(critic_pairs_v),
                               eval_max_rounds=int(eval_rounds_v), eval_samples=int(eval_samples_v))
        ctx.training.set_continuous(int(every or 0))
        try:
            ctx.training.start(request)
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc
        return *refresh(), "Training started in a separate process."

    def cancel():
        ctx.training.cancel()
        return *refresh(), ""

    @reported
    def resume():
        try:
            ctx.training.resume()
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc
        return *refresh(), ""

    @reported
    def promote():
        job = ctx.training.job
        finished = (job.status().get("version") or {}) if job else {}
        version = finished.get("version")
        if not version:
            raise gr.Error("No finished run with a new version to promote.")
        ctx.promote(version)
        decision = finished.get("evaluation", {}).get("gate")
        if decision and not decision["promote"]:  # a person may overrule the gate, but knowingly
            gr.Warning(f"{version} promoted by hand against the gate's verdict: {decision['reason']}")
        gr.Info(f"{version} now serves new sessions.")
        return *refresh(), ""

    @reported
    def rollback(target):
        if not target:
            raise gr.Error("Choose a version (or 'base') to roll back to.")
        try:
            ctx.promote(None if target == "base" else target, reason="rollback")
        except RegistryError as exc:
            raise gr.Error(str(exc)) from exc
        gr.Info(f"Serving {target} for new sessions.")
        return *refresh(), ""

    settings = [kind, mode, since, minimum, algorithm, best_of_n, critic_epochs, eval_limit, max_new_tokens,
                auto_promote, margin, continuous, actor_pairs, critic_pairs, eval_rounds, eval_samples]
    # Named API endpoints: scripts (and the tests) drive training from gradio_client as the tab does.
    # The timer's refresh leaves the notice alone; the buttons' results set it.
    start_btn.click(start, settings, [*outputs, notice], api_name="train_start")
    cancel_btn.click(cancel, None, [*outputs, notice], api_name="train_cancel")
    resume_btn.click(resume, None, [*outputs, notice], api_name="train_resume")
    promote_btn.click(promote, None, [*outputs, notice], api_name="train_promote")
    rollback_btn.click(rollback, rollback_to, [*outputs, notice], api_name="train_rollback")
    continuous.change(lambda every: ctx.training.set_continuous(int(every or 0)), continuous, None,
                      api_visibility="private")
    tab.select(refresh, None, outputs, api_name="train_status")
    timer.tick(refresh, None, outputs, api_visibility="private")
