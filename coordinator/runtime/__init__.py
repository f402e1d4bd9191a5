"""The coordinator process: reply consumer, batch processor, outbox relay, deadlines, housekeeping."""
