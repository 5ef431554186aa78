"""Participants: teams and personal API tokens (stored hashed, shown once, revocable)."""
