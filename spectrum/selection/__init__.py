"""Scores -> what to train."""
