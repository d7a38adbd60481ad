"""The Kafka side: topics, codec and validation, routing, the agents."""
