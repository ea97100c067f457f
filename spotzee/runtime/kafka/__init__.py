"""Kafka runtime: client configuration, topic administration and consumer lag (Apache Kafka)."""
