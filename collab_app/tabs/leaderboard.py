"""Leaderboard tab: the ratings table and chart of ``collab_app.leaderboard``, refreshed on opening."""

from __future__ import annotations

import gradio as gr

from collab_app.context import AppContext
from collab_app.leaderboard import COLUMNS, leaderboard, left_out_note, ratings_figure, table_rows
from collab_app.notices import reports_to
from simulators.tasks import TaskFileError

EXPLANATION = (
    "Bradley–Terry ratings on the Elo scale (mean 1000) fitted to the Compare tab's blind arena votes; a tie or "
    "*both bad* counts half a win for each side. The interval is the 95% bootstrap interval (votes "
    "resampled 1000 times); with only a few votes it means little. *Mean reward* and *success* are the model's scored sessions in this app; "
    "*held-out* columns come from the rollout files you add below."
)


def build_leaderboard_tab(ctx: AppContext, tab: gr.Tab) -> None:
    gr.Markdown(EXPLANATION)
    with gr.Row():
        votes = gr.Radio([("Final votes (one per comparison)", "final"), ("Round votes (one per turn)", "round"),
                          ("All votes", "all")], value="final", label="Votes to rate on")
        rollouts = gr.File(label="Held-out rollouts (sweet_rl JSONL, optional)", file_count="multiple",
                           file_types=[".jsonl"], height=120)
        unblind = gr.Checkbox(False, label="Include votes that were not blind (“choose two models”)",
                              elem_id="leaderboard-unblind")
        refresh = gr.Button("Refresh", size="sm", scale=0)
    note = gr.Markdown(elem_id="leaderboard-note")
    table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, elem_id="leaderboard-table")
    plot = gr.Plot(label="Ratings", elem_id="leaderboard-plot")

    @reports_to(note)  # unreadable rollouts: said in the note, the table stays as it was
    def update(which, files, include_unblind):
        try:
            rows = leaderboard(ctx.store, votes=which, rollout_files=[str(f) for f in files or []],
                               include_unblind=include_unblind)
        except (TaskFileError, OSError) as exc:
            raise gr.Error(f"Could not read the rollouts: {exc}") from exc
        return left_out_note(ctx.store, which, include_unblind), table_rows(rows), ratings_figure(rows)

    for event in (tab.select, refresh.click, votes.change, rollouts.change, unblind.change):
        event(update, [votes, rollouts, unblind], [note, table, plot])
