"""Build and launch the Gradio app. Each UI mode lives in its own ``*_tab`` module."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from collab_app.cli import AppConfig  # noqa: E402
from collab_app.context import AppContext  # noqa: E402
from collab_app.tabs.chat import build_chat_tab  # noqa: E402
from collab_app.tabs.collaborate import build_collaborate_tab  # noqa: E402
from collab_app.tabs.compare import build_compare_tab  # noqa: E402
from collab_app.tabs.data import build_data_tab  # noqa: E402
from collab_app.tabs.leaderboard import build_leaderboard_tab  # noqa: E402
from collab_app.tabs.train import build_train_tab  # noqa: E402

# System fonts only: the default theme would make every browser fetch Google Fonts.
THEME = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],
                       font_mono=["ui-monospace", "monospace"])


def build_app(config: AppConfig) -> tuple[gr.Blocks, AppContext]:
    ctx = AppContext(config)
    # fill_width: the chat, the reference and the panes use the whole window, not a centred column.
    with gr.Blocks(title="collab-rl", analytics_enabled=False, fill_width=True) as app:
        # A callable value is evaluated at each page load: it shows the version served right now.
        gr.Markdown(lambda: f"## collab-rl · agent `{ctx.actor.resolved_spec()}`")
        with gr.Tab("Collaborate"):
            build_collaborate_tab(ctx)
        with gr.Tab("Compare", elem_id="compare-tab"):
            build_compare_tab(ctx)
        with gr.Tab("Leaderboard") as leaderboard_tab:
            build_leaderboard_tab(ctx, leaderboard_tab)
        with gr.Tab("Data") as data_tab:
            build_data_tab(ctx, data_tab)
        with gr.Tab("Train") as train_tab:
            build_train_tab(ctx, train_tab)
        with gr.Tab("Chat"):
            build_chat_tab(ctx)

        def forget_uploads(request: gr.Request):  # a closed or reloaded page's uploads go with it
            ctx.catalog.forget(request.session_hash)

        app.unload(forget_uploads)
    app.queue(default_concurrency_limit=4)
    return app, ctx


def launch(config: AppConfig, credentials: list[tuple[str, str]] | None = None, **kwargs):
    app, ctx = build_app(config)
    for warning in ctx.frontend_setup_warnings():  # said at start too, not only at the first page
        print(f"collab-rl: {warning}", flush=True)
    return app.launch(server_name=config.host, server_port=config.port, auth=credentials or None,
                      theme=THEME, footer_links=[], allowed_paths=[str(ctx.store.renders_dir)], **kwargs)
