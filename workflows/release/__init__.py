"""The release workflow: build and verify artifacts, promote, hot standby, the release record."""
