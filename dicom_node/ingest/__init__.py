"""Ingest: the Storage SCP, who may associate, and each received instance spooled durably."""
