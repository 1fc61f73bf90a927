"""Tenant exports: start one (an export operation), list them, download through a signed link."""
