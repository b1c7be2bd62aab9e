"""Ingest: a Segment-compatible collection API that answers 2xx only after Kafka acknowledged."""
