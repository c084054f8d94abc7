"""The incident workflow: rollback criteria, the decision path (rollback, ROLLBACK issue), alerts."""
