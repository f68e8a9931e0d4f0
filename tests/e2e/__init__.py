"""End-to-end tests against a real Ganeti sandbox (a package, so that its conftest is not `conftest`)."""
