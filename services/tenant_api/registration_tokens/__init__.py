"""Registration tokens of a tenant's homeserver (who may sign up while registration is 'token')."""
