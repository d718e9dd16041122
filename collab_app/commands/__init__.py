"""The app's companion commands, each ``python -m collab_app COMMAND`` (``collab_app.cli`` dispatches):

* ``export``       sessions -> sweet_rl JSONL, TRL preference pairs (templated or conversational), a HF dataset
* ``models``       the one registry command: list, current, promote, rollback
* ``serve_model``  ``serve-model``: an OpenAI-compatible HTTP server over a local model
* ``leaderboard``  Bradley–Terry ratings of the Compare tab's votes

Each module has ``main(argv) -> int``. Commands may import ``collab_app`` modules (never a tab),
``training`` and ``simulators``; nothing imports a command but ``collab_app.cli`` and the tabs that
reuse one's function (the Data tab exports, the Train tab lists versions).
"""
