"""Internals of the participant SDK; not part of its public API."""
