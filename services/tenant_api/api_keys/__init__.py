"""Integrator API keys: scoped, bound to the operator organisation or one tenant."""
