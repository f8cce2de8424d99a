"""The marketplace's tests: unit (no I/O), integration (real PostgreSQL and Kafka), e2e."""
