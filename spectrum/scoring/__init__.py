"""Weights -> scores."""
