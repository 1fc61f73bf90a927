"""The audit log: every write, by whom, on what, in which request."""
