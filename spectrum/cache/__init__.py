"""Scores on disk."""
