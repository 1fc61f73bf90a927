"""Code C3 ships into every tenant's Synapse (loaded through ``modules:`` in homeserver.yaml).

It imports only Synapse's module API — never the platform — so it runs wherever Synapse runs
(the local backend's processes, a Synapse container image with the C3 wheel installed)."""
