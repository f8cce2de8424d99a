"""Helpers shared by the test suite: waiting, infrastructure, Kafka and processes."""
