"""Invoices: rating usage into money, drafts, finalization."""
