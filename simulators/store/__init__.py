"""What people and simulators did, kept: the session database and what it turns into.

* ``sessions``     SQLite, turn by turn (``SessionStore``): sessions, turns, scores, typed feedback
  (edits, regenerations, likes, ``Vote`` records of the Compare tab)
* ``preferences``  turn-level (prompt, chosen, rejected) pairs made from that feedback

It lives in ``simulators`` (the bottom layer) because training reads it as much as the app writes
it; ``training`` and ``collab_app`` import it, it imports only ``simulators`` modules below it.
"""

from simulators.store.sessions import MIGRATIONS, SESSION_MODES, SessionRow, SessionStore, Vote

__all__ = ["MIGRATIONS", "SESSION_MODES", "SessionRow", "SessionStore", "Vote"]
