"""Code every Tierflow service uses: settings, contracts, topics, Kafka/DB plumbing, metrics."""
