"""Plans: prices and limits tenants subscribe to (operator-managed)."""
