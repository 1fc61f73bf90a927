"""What every tenant API domain shares: tenant scoping by principal, cursor pagination, the
problem+json builder, the repository base and tasks sent after commit. Domains import the kit,
never each other, for these."""
