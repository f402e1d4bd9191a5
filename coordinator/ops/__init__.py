"""Operator tools: actions on sagas, dead-letter administration, starting sagas."""
