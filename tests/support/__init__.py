"""Helpers shared by the test suites (no fixtures: those live in the ``conftest.py`` files).

- :mod:`tests.support.waiting`: :func:`~tests.support.waiting.eventually`, the one way a test
  waits for something to become true.
- :mod:`tests.support.offsets`: :func:`~tests.support.offsets.committed_to_end`, the fact that
  a consumer group has processed a topic up to its end.
- :mod:`tests.support.outbox`: :func:`~tests.support.outbox.outbox_sent`, the fact after which
  a topic read to its end shows everything the coordinator has sent.
- :mod:`tests.support.replies`: :func:`~tests.support.replies.participant_reply`, a
  participant's reply to a command, built by the SDK itself.
"""
