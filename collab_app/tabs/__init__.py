"""The app's tabs, one module each, built into one ``gr.Blocks`` by ``collab_app.app``:

* ``collaborate``  a person (or the simulator) and the agent on a ColBench task, scored live
* ``compare``      the blind arena: two models answer one shared history, votes per round and overall
* ``chat``         a plain chat with the served model; feedback still makes preference pairs
* ``data``         replay of logged sessions and exports
* ``train``        logged sessions -> a new actor version -> the gate -> promoted, without a restart
* ``leaderboard``  ratings of the arena's votes beside automatic scores

A tab holds only Gradio wiring: what it does lives in modules below it (``collab_app.session``,
``collab_app.comparison``, ``collab_app.training_jobs``, ...), which know nothing of Gradio, so
tests drive them directly. Only ``collab_app.app`` imports a tab.
"""
