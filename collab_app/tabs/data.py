"""Data tab: browse and filter stored sessions, replay one, export them."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr

from collab_app.commands.export import NO_PAIRS, ExportError, export
from collab_app.context import AppContext
from collab_app.messages import agent_markdown, score_summary
from collab_app.notices import notice_box, warning
from simulators.store import SESSION_MODES
from simulators.store.preferences import preference_pairs

COLUMNS = ["session", "started", "kind", "mode", "human", "model", "status", "reward", "rating", "turns"]
ANY = "any"
TABLE_ROWS = 1000  # the table shows the newest sessions; exports take every one the filters match
REPLAY_PLACEHOLDER = "Click a session in the table above to replay it here: its dialogue, rendered pages and scores."

logger = logging.getLogger(__name__)


def session_table(ctx: AppContext, kind: str, mode: str, model: str, min_reward: float | None) -> list[list]:
    rows = ctx.store.list_sessions(**filters_of(kind, mode, model, min_reward), limit=TABLE_ROWS)
    return [[r.id, time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at)), r.task_kind, r.mode, r.human,
             r.model_version, r.status, None if r.reward is None else round(r.reward, 3), r.rating, r.turns]
            for r in rows]


def replay(ctx: AppContext, session_id: str) -> tuple[list[dict], str]:
    """A stored session as chat messages (with its rendered pages) and a score summary."""
    episode = ctx.store.episode(session_id)
    hashes = {t["idx"]: t["render_hash"] for t in ctx.store.turns(session_id) if t["render_hash"]}
    messages = []
    for index, turn in enumerate(episode.turns):
        if turn.role == "human":
            messages.append({"role": "user", "content": turn.content})
            continue
        content: object = agent_markdown(turn.content, episode.task.kind)
        path = ctx.store.render_path(hashes[index]) if index in hashes else None
        if path is not None:
            content = [content, {"path": str(path)}]
        messages.append({"role": "assistant", "content": content})
    summary = f"**Task ({episode.task.kind}):** {episode.task.problem_description}\n\n{scores_line(episode)}"
    return messages, summary


def scores_line(episode) -> str:
    """The replayed session's result in words, as the Collaborate tab says it (not the scorer's raw
    dict, whose sandbox report alone is a screenful)."""
    scores, rating = episode.scores, episode.scores.get("rating")
    rated = f"rated {rating}/5 by the person" if rating is not None else ""
    if episode.reward is None and not any(key in scores for key in ("tests_passed", "clip", "design", "error")):
        return f"**Result:** {rated}" if rated else "**Not scored** (the session ended without a scored answer)"
    reward = "–" if episode.reward is None else f"{episode.reward:.3f}"
    return f"**Reward:** {reward} · {score_summary(scores, episode.task.kind)}" + (f" · {rated}" if rated else "")


def filters_of(kind: str, mode: str, model: str, min_reward: float | None) -> dict:
    """The table's filters as ``SessionStore.list_sessions`` takes them (the export uses the same)."""
    return {"kind": None if kind == ANY else kind, "mode": None if mode == ANY else mode,
            "model_version": (model or "").strip() or None, "min_reward": min_reward if min_reward else None}


def filters_words(filters: dict) -> str:
    """`` matching kind backend, minimum reward 0.5`` (empty without filters): what an export left out."""
    names = {"kind": "kind", "mode": "mode", "model_version": "model", "min_reward": "minimum reward"}
    said = [f"{names[key]} {value}" for key, value in filters.items() if value is not None]
    return f" matching {', '.join(said)}" if said else ""


def write_export(ctx: AppContext, fmt: str, filters: dict, progress) -> tuple[str | None, str]:
    """The export as a download, and a line saying what it holds (or why there is none)."""
    out_dir = Path(tempfile.mkdtemp(prefix="collab-export-"))
    if fmt in ("trl", "trl-conversational"):
        path = out_dir / "preferences.jsonl"
        count = export(ctx.store, fmt, path, progress=progress)
        if not count:
            return None, f"{NO_PAIRS} Nothing to download."
        shape = "templated prompt text" if fmt == "trl" else "the prompt as a list of messages"
        return str(path), (f"Exported {count} preference pair(s) (TRL prompt/chosen/rejected JSONL, {shape}), "
                           "from every session: the filters choose sessions, not pairs.")
    if fmt == "hf":
        count = export(ctx.store, "hf", out_dir / "dataset", progress=progress, **filters)
        progress("Zipping the dataset", 0, 0)
        path = shutil.make_archive(str(out_dir / "collab-dataset"), "zip", out_dir / "dataset")
        pairs = len(preference_pairs(ctx.store))
        return path, (f"Exported {count} session(s){filters_words(filters)} and {pairs} preference pair(s) as a "
                      "Hugging Face dataset: unzip it and open it with `datasets.load_from_disk`."
                      + ("" if pairs else f" Its preferences split is empty. {NO_PAIRS}"))
    path = out_dir / "sessions.jsonl"
    count = export(ctx.store, "sweet", path, progress=progress, **filters)
    if not count:
        return None, f"No stored session{filters_words(filters)}: nothing to download."
    return str(path), f"Exported {count} session(s){filters_words(filters)} (sweet_rl trajectory JSONL)."


def build_data_tab(ctx: AppContext, tab: gr.Tab) -> None:
    with gr.Row():
        kind = gr.Dropdown([ANY, "backend", "frontend"], value=ANY, label="Kind")
        mode = gr.Dropdown([ANY, *SESSION_MODES], value=ANY, label="Mode")
        model = gr.Textbox(label="Model version", placeholder="any (Enter to apply)", elem_id="data-model")
        min_reward = gr.Number(label="Minimum reward", value=None, elem_id="data-min-reward")
        refresh = gr.Button("Refresh", size="sm")
    # No wrapping: ten columns in a wrapped table squeeze each header to one letter per line.
    table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=False, elem_id="sessions-table")
    with gr.Row():
        with gr.Column(scale=3):
            # No autoscroll: a replay is read from its first message, not from its end.
            replay_chat = gr.Chatbot(label="Replay", height=420, buttons=["copy", "copy_all"], elem_id="replay-chat",
                                     placeholder=REPLAY_PLACEHOLDER, autoscroll=False)
        with gr.Column(scale=1):
            summary = gr.Markdown(elem_id="replay-summary")
            fmt = gr.Radio([("sweet_rl JSONL", "sweet"), ("TRL preference pairs", "trl"),
                            ("TRL conversational pairs (messages)", "trl-conversational"),
                            ("HF dataset (zip)", "hf")],
                           value="sweet", label="Export format",
                           info="Sessions are exported as the table shows them: with its filters.")
            export_btn = gr.Button("Export", elem_id="export")
            export_note = notice_box("export-note")
            export_file = gr.File(label="Download", interactive=False, elem_id="export-file", height=100)

    filters = [kind, mode, model, min_reward]

    def refresh_table(*values):
        return session_table(ctx, *values)

    def select(evt: gr.SelectData, data):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        session_id = data.iloc[row, 0] if hasattr(data, "iloc") else data[row][0]
        try:
            return replay(ctx, session_id)
        except Exception as exc:  # noqa: BLE001 - a row this version cannot read: say so, keep the tab usable
            logger.exception("replay of session %s failed", session_id)
            return [], warning(f"Session `{session_id}` could not be replayed: {type(exc).__name__}: {exc}")

    def do_export(fmt_value, kind_value, mode_value, model_value, min_reward_value, progress=gr.Progress()):
        def report(text: str, done: int = 0, total: int = 0) -> None:  # shown over the note and the download
            progress((done, total) if total else None, desc=text, unit="sessions")

        try:
            return write_export(ctx, fmt_value, filters_of(kind_value, mode_value, model_value, min_reward_value),
                                report)
        except ExportError as exc:
            return None, warning(f"Export failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - a message in the tab, the traceback in the server log
            logger.exception("export failed")
            return None, warning(f"Export failed: {type(exc).__name__}: {exc}")

    # The typed filters apply on Enter or on leaving the box, as the dropdowns do on a change.
    for trigger in (tab.select, refresh.click, kind.change, mode.change, model.submit, model.blur,
                    min_reward.submit, min_reward.blur):
        trigger(refresh_table, filters, table)
    table.select(select, table, [replay_chat, summary])
    export_btn.click(do_export, [fmt, *filters], [export_file, export_note])
