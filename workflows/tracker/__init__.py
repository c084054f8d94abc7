"""Issue trackers: the protocol, Jira, the file tracker, the outbox, idempotency and rendering."""
