"""Helpers the tests share: the running platform (`platform`), the test environment
(`environment`: databases, Redis namespaces, an isolated platform), the tenant API (`api`),
Matrix clients (`matrix`), exports (`exports`) and row factories (`factories`)."""
