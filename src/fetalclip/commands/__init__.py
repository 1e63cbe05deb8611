"""Command groups of the ``fetalclip`` CLI; each module exposes ``register(app)``."""
