"""Compare tab: two anonymous models side by side, a vote after every round, names revealed at the end.

Thin handlers around ``Comparison`` (the rules, in ``collab_app.comparison``). By default the pair
is a blind draw from the arena's pool (``collab_app.arena``); developers may choose both models
instead, and those votes are marked as not blind. Model A is always the left pane and position
``a`` of the stored votes; the names never reach the page before the final vote.
"""

from __future__ import annotations

import gradio as gr

from collab_app.arena import arena_pool, blind_battles, draw_pair
from collab_app.comparison import POSITIONS, Comparison, Side
from collab_app.context import AppContext
from collab_app.messages import agent_markdown, score_summary
from collab_app.notices import notice_box, reports_to, warning
from collab_app.session import SessionError
from simulators.domain import MAX_ROUNDS
from simulators.llm.base import ModelError

NO_COMPARISON = "Pick a task, then press **Start comparison**: the arena draws two models for you."
ARENA, CHOOSE = "arena", "choose"
HOW_CHOICES = [("Blind arena: the app draws two models from its pool", ARENA),
               ("Choose two models (for developers: not blind, so the Leaderboard leaves these votes out)", CHOOSE)]
VOTE_BUTTONS = (("a", "← A is better"), ("tie", "Tie"), ("both_bad", "Both are bad"), ("b", "B is better →"))
SAME_MODEL_NOTE = ("Both specs serve the same model: its replies are sampled (each side with its own seed) so "
                   "they differ, but the Leaderboard leaves these votes out: a model cannot be rated against itself.")
VERDICT_WORDS = {"a": "A is better", "b": "B is better", "tie": "a tie", "both_bad": "both are bad"}


# -- what the UI shows of a comparison ------------------------------------------------------------
def side_messages(comparison: Comparison | None, position: str, streaming: str | None = None) -> list[dict]:
    """One side's pane: the shared dialogue, ending with that side's own reply (or the text streaming)."""
    if comparison is None:
        return []
    messages = []
    for turn, _ in comparison.conversation(position):
        if turn.role == "human":
            messages.append({"role": "user", "content": turn.content})
        else:
            messages.append({"role": "assistant", "content": agent_markdown(turn.content, comparison.task.kind)
                             or "*(empty reply)*"})
    if streaming is not None:
        messages.append({"role": "assistant", "content": streaming})
    return messages


def status_markdown(comparison: Comparison | None) -> str:
    if comparison is None:
        return NO_COMPARISON
    stage = comparison.stage
    tally = _tally(comparison)
    head = f"**Round {max(comparison.rounds, 1)}/{MAX_ROUNDS}**" + (f" · round votes: {tally}" if tally else "")
    return head + " · " + {
        "replies": "both models are replying…",
        "vote": "**Which reply is better?** Vote to continue; the better reply stays in the conversation.",
        "message": "Write your next message to both models, or **End comparison**.",
        "final_vote": f"**The rounds are over** ({comparison.end_reason}). Overall, which model helped you more?",
        "done": "Done. The names are revealed below.",
    }[stage]


def _tally(comparison: Comparison) -> str:
    votes = comparison.round_votes
    if not votes:
        return ""
    return " · ".join(f"{label} {votes.count(v)}" for v, label in
                      (("a", "A"), ("b", "B"), ("tie", "tie"), ("both_bad", "both bad")) if votes.count(v))


def result_markdown(comparison: Comparison | None) -> str:
    """The reveal: who was who, the votes, and both final answers' automatic scores."""
    if comparison is None or not comparison.revealed:
        return ""
    a, b = comparison.sides["a"], comparison.sides["b"]
    won = {p: comparison.round_votes.count(p) for p in POSITIONS}
    verdict = comparison.final_verdict
    lines = [f"### Model A was `{a.name}` · Model B was `{b.name}`",
             f"Your overall vote: **{VERDICT_WORDS[verdict]}**.", "",
             "| | Model A | Model B |", "|---|---|---|",
             f"| model | `{a.name}` | `{b.name}` |",
             f"| rounds won | {won['a']} | {won['b']} |",
             f"| final answer | {score_cell(a, comparison)} | {score_cell(b, comparison)} |", ""]
    lines.append("A blind battle: the Leaderboard counts it." if comparison.blind else
                 "You chose these models, so this was not blind: the Leaderboard leaves these votes out.")
    if comparison.identity_leaks:
        named = " and ".join(f"Model {p.upper()}" for p in sorted(comparison.identity_leaks))
        lines.append(f"{named} named itself in a reply: the votes are kept and marked as such.")
    return "\n".join(lines)


def score_cell(side: Side, comparison: Comparison) -> str:
    if comparison.task.free_form:
        return "no reference to score against"
    if side.score_error:
        return f"not scored: {side.score_error}"
    return score_summary(side.scores, comparison.task.kind)


# -- the tab -----------------------------------------------------------------------------------------
def build_compare_tab(ctx: AppContext) -> None:
    comparison_state = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            gr.Markdown("### Compare two models\nThey are shown as **A** and **B** in random order; "
                        "you learn which models they are after your final vote.")
            with gr.Accordion("Set up a comparison", open=True) as setup:
                kind = gr.Radio(["any", "backend", "frontend"], value="any", label="Kind")
                task_pick = gr.Dropdown(ctx.catalog.choices(), label="Task", elem_id="compare-task", value=None)
                random_btn = gr.Button("Random task", size="sm")
                how = gr.Radio(HOW_CHOICES, value=ARENA, label="Models", elem_id="compare-how")
                with gr.Group(visible=False) as choose_box:
                    spec_help = "'default', a local model directory, registry:VERSION or openai:BASE_URL#MODEL"
                    first_spec = gr.Textbox(label="Model 1", value=ctx.config.model, info=spec_help, max_lines=1,
                                            elem_id="compare-model-1")
                    second_spec = gr.Textbox(label="Model 2", info=spec_help, max_lines=1, elem_id="compare-model-2")
                name = gr.Textbox(label="Your name (recorded with the votes)", value="anonymous", max_lines=1)
            start_btn = gr.Button("Start comparison", variant="primary", elem_id="compare-start")
            with gr.Accordion("You are the human: what you know", open=True):
                problem = gr.Markdown(NO_COMPARISON)
                reference_code = gr.Code(language="python", label="Hidden reference function", visible=False,
                                         lines=10, max_lines=30, interactive=False)
        with gr.Column(scale=4):
            status = gr.Markdown(NO_COMPARISON, elem_id="compare-status")
            notice = notice_box("compare-notice")
            with gr.Row(equal_height=True):
                chat_a = gr.Chatbot(label="Model A", height=440, buttons=["copy", "copy_all"], elem_id="compare-chat-a")
                chat_b = gr.Chatbot(label="Model B", height=440, buttons=["copy", "copy_all"], elem_id="compare-chat-b")
            with gr.Row(visible=False) as pages_row:
                page_a = gr.Image(label="Model A's page", type="filepath", interactive=False, height=400)
                reference_image = gr.Image(label="The page you want", type="pil", interactive=False, height=400)
                page_b = gr.Image(label="Model B's page", type="filepath", interactive=False, height=400)
            with gr.Row():
                vote_buttons = [gr.Button(label, interactive=False, elem_id=f"compare-vote-{verdict.replace('_', '-')}")
                                for verdict, label in VOTE_BUTTONS]
            with gr.Row():
                textbox = gr.Textbox(placeholder="Your next message to both models…", show_label=False, scale=8,
                                     max_lines=8, interactive=False, elem_id="compare-input")
                send_btn = gr.Button("Send", variant="primary", scale=1, interactive=False, elem_id="compare-send")
                end_btn = gr.Button("End comparison", scale=1, interactive=False, elem_id="compare-end")
                retry_btn = gr.Button("Retry replies", scale=1, interactive=False, elem_id="compare-retry")
            result = gr.Markdown(elem_id="compare-result")

    # -- handlers -------------------------------------------------------------------------------
    def latest_page(comparison: Comparison, position: str):
        hashes = [h for _, h in comparison.conversation(position) if h]
        path = ctx.store.render_path(hashes[-1]) if hashes else None
        return str(path) if path else None

    reported = reports_to(notice)  # refusals: a line beside the panes, not Gradio's error badge over them

    def views(comparison: Comparison | None, streaming: dict[str, str] | None = None, note: str = ""):
        """Everything that depends on the comparison, in the order of ``outputs``."""
        stage = comparison.stage if comparison else None
        if streaming is not None:
            stage = "replies"  # nothing is clickable while the models write
        frontend = comparison is not None and comparison.task.kind == "frontend"
        revealed = comparison is not None and comparison.revealed
        labels = {p: f"Model {p.upper()}" + (f" · {comparison.sides[p].name}" if revealed else "")
                  for p in POSITIONS}
        panes = [gr.update(value=side_messages(comparison, p, (streaming or {}).get(p)), label=labels[p])
                 for p in POSITIONS]
        voting = gr.update(interactive=stage in ("vote", "final_vote"))
        writing = gr.update(interactive=stage == "message")
        return (comparison, *panes, status_markdown(comparison), gr.update(visible=frontend),
                latest_page(comparison, "a") if frontend else None,
                latest_page(comparison, "b") if frontend else None,
                *[voting] * len(vote_buttons), writing, writing, writing,
                gr.update(interactive=stage == "replies" and streaming is None), result_markdown(comparison), note)

    outputs = [comparison_state, chat_a, chat_b, status, pages_row, page_a, page_b, *vote_buttons,
               textbox, send_btn, end_btn, retry_btn, result, notice]

    @reported
    def start(task_id, how_chosen, spec_1, spec_2, person, comparison, request: gr.Request):
        if not task_id:
            raise gr.Error("Pick a task first (or press Random task).")
        if how_chosen == ARENA:
            pool = arena_pool(ctx.config.arena_models, ctx.config.base)
            if len(pool) < 2:
                raise gr.Error(f"The arena's pool holds {len(pool)} model(s): start the app with "
                               "--arena-models SPEC,SPEC,…, train a version in the Train tab, or choose two models.")
            specs = list(draw_pair(pool, blind_battles(ctx.store)))
        else:
            specs = [(spec_1 or "").strip(), (spec_2 or "").strip()]
            if not all(specs):
                raise gr.Error("Name both models to compare.")
            if specs[0] == specs[1]:
                raise gr.Error("Pick two different models.")
        task = ctx.catalog.get(task_id, request.session_hash)  # a loaded task or this session's upload
        if not all(ctx.model_slot(spec).ready for spec in specs):  # no names: the arena is blind
            yield {notice: "Loading the two models… (a model's first load takes a while)"}
        try:
            models = [ctx.model_slot(spec).get() for spec in specs]
        except ModelError as exc:
            raise gr.Error(f"Model error: {exc}") from exc
        if comparison is not None:
            comparison.abandon()
        comparison = Comparison(task, ctx.store, *models, human_name=f"person:{person or 'anonymous'}",
                                blind=how_chosen == ARENA, specs=tuple(specs),
                                max_new_tokens=ctx.config.max_new_tokens,
                                renderer=ctx.renderer if task.kind == "frontend" else None)
        reference = ctx.reference_image(task) if task.kind == "frontend" else None
        shows_code = task.kind == "backend"
        note = SAME_MODEL_NOTE if comparison.same_model else ""
        yield (*views(comparison, note=note), f"**Task ({task.kind}):** {task.problem_description}",
               gr.update(value=task.hidden_information if shows_code else "", visible=shows_code), reference,
               gr.update(open=False))
        for view in stream(comparison, note):
            yield (*view, gr.update(), gr.update(), gr.update(), gr.update())

    def stream(comparison, note: str = ""):
        """Both replies stream into their panes; a failure ends as a notice and Retry stays open."""
        if comparison is None or comparison.stage != "replies":
            yield views(comparison)
            return
        try:
            for view in comparison.replies():
                if view.complete:
                    failed = [f"Model {p.upper()}'s page did not render: {getattr(view, p).render_error}"
                              for p in POSITIONS if getattr(view, p).render_error]
                    note = warning(" ".join(failed)) if failed else note
                    break
                yield views(comparison, {"a": view.a.text, "b": view.b.text}, note)
        except (ModelError, SessionError) as exc:
            note = warning(str(exc))
        except Exception as exc:  # noqa: BLE001 - a failed round must leave the comparison usable
            note = warning(f"The replies failed: {exc}")
        yield views(comparison, note=note)

    @reported
    def vote(verdict: str, comparison):
        if comparison is None:
            raise gr.Error(NO_COMPARISON)
        if comparison.stage == "final_vote":
            comparison.vote_final(verdict)
        else:
            comparison.vote(verdict)
        return views(comparison)

    @reported
    def person_sends(text, comparison):
        if comparison is None:
            raise gr.Error(NO_COMPARISON)
        text = ctx.person_message(text)
        comparison.human_says(text)
        yield "", *views(comparison)
        for view in stream(comparison):
            yield gr.update(), *view

    @reported
    def end(comparison):
        if comparison is None:
            raise gr.Error(NO_COMPARISON)
        comparison.end()
        return views(comparison)

    # Events that make the models reply stream the round themselves (no chained step): a refusal
    # is a notice, not an exception, so a chain could not tell it from success.
    how.change(lambda chosen: gr.update(visible=chosen == CHOOSE), how, choose_box)
    start_btn.click(start, [task_pick, how, first_spec, second_spec, name, comparison_state],
                    [*outputs, problem, reference_code, reference_image, setup])
    for button, (verdict, _) in zip(vote_buttons, VOTE_BUTTONS):
        button.click(lambda c, v=verdict: vote(v, c), comparison_state, outputs)
    for trigger in (textbox.submit, send_btn.click):
        trigger(person_sends, [textbox, comparison_state], [textbox, *outputs])
    end_btn.click(end, comparison_state, outputs)
    retry_btn.click(stream, comparison_state, outputs)
    random_btn.click(reported(ctx.random_task), kind, [task_pick, notice])
    kind.change(ctx.task_choices, kind, task_pick)
