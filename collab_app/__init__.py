"""The collaboration app: a real person takes the simulated human's seat (python -m collab_app)."""
