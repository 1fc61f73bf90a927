"""Accounts: operators and tenant admins who sign in to the API and the portal."""
