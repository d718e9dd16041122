"""Data tab: browse and filter stored sessions, replay one, export them."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import gradio as gr

from collab_app.commands.export import NO_PAIRS, export
from collab_app.context import AppContext
from collab_app.messages import agent_markdown
from collab_app.notices import notice_box
from simulators.store import SESSION_MODES
from simulators.store.preferences import preference_pairs

COLUMNS = ["session", "started", "kind", "mode", "human", "model", "status", "reward", "rating", "turns"]
ANY = "any"


def session_table(ctx: AppContext, kind: str, mode: str, model: str, min_reward: float | None) -> list[list]:
    rows = ctx.store.list_sessions(kind=None if kind == ANY else kind, mode=None if mode == ANY else mode,
                                   model_version=model.strip() or None,
                                   min_reward=min_reward if min_reward else None)
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
    scores = {k: v for k, v in episode.scores.items() if k != "tests"}
    summary = (f"**Task ({episode.task.kind}):** {episode.task.problem_description}\n\n"
               f"**Reward:** {episode.reward} · **Scores:** `{scores}`")
    return messages, summary


def build_data_tab(ctx: AppContext, tab: gr.Tab) -> None:
    with gr.Row():
        kind = gr.Dropdown([ANY, "backend", "frontend"], value=ANY, label="Kind")
        mode = gr.Dropdown([ANY, *SESSION_MODES], value=ANY, label="Mode")
        model = gr.Textbox(label="Model version", placeholder="any")
        min_reward = gr.Number(label="Minimum reward", value=None)
        refresh = gr.Button("Refresh", size="sm")
    # No wrapping: ten columns in a wrapped table squeeze each header to one letter per line.
    table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=False, elem_id="sessions-table")
    with gr.Row():
        with gr.Column(scale=3):
            replay_chat = gr.Chatbot(label="Replay", height=420, buttons=["copy", "copy_all"])
        with gr.Column(scale=1):
            summary = gr.Markdown()
            fmt = gr.Radio([("sweet_rl JSONL", "sweet"), ("TRL preference pairs", "trl"),
                            ("TRL conversational pairs (messages)", "trl-conversational"),
                            ("HF dataset (zip)", "hf")],
                           value="sweet", label="Export format")
            export_btn = gr.Button("Export", elem_id="export")
            export_note = notice_box("export-note")
            export_file = gr.File(label="Download", interactive=False, elem_id="export-file")

    filters = [kind, mode, model, min_reward]

    def refresh_table(*values):
        return session_table(ctx, *values)

    def select(evt: gr.SelectData, data):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return replay(ctx, data.iloc[row, 0] if hasattr(data, "iloc") else data[row][0])

    def do_export(fmt_value, kind_value, mode_value):
        """The export as a download, and a line saying what it holds (or why there is none)."""
        out_dir = Path(tempfile.mkdtemp(prefix="collab-export-"))
        filters = {"kind": None if kind_value == ANY else kind_value, "mode": None if mode_value == ANY else mode_value}
        if fmt_value in ("trl", "trl-conversational"):
            path = out_dir / "preferences.jsonl"
            count = export(ctx.store, fmt_value, path)
            if not count:
                return None, f"{NO_PAIRS} Nothing to download."
            shape = "templated prompt text" if fmt_value == "trl" else "the prompt as a list of messages"
            return str(path), f"Exported {count} preference pair(s) (TRL prompt/chosen/rejected JSONL, {shape})."
        if fmt_value == "hf":
            import shutil

            count = export(ctx.store, "hf", out_dir / "dataset", **filters)
            path = shutil.make_archive(str(out_dir / "collab-dataset"), "zip", out_dir / "dataset")
            pairs = len(preference_pairs(ctx.store))
            return path, (f"Exported {count} session(s) and {pairs} preference pair(s) as a Hugging Face dataset: "
                          "unzip it and open it with `datasets.load_from_disk`."
                          + ("" if pairs else f" Its preferences split is empty. {NO_PAIRS}"))
        path = out_dir / "sessions.jsonl"
        count = export(ctx.store, "sweet", path, **filters)
        if not count:
            return None, "No stored session matches these filters: nothing to download."
        return str(path), f"Exported {count} session(s) (sweet_rl trajectory JSONL)."

    for trigger in (tab.select, refresh.click, kind.change, mode.change):
        trigger(refresh_table, filters, table)
    table.select(select, table, [replay_chat, summary])
    export_btn.click(do_export, [fmt, kind, mode], [export_file, export_note])
