"""Delivery: the durable outbox and the sender that C-STOREs results to each destination."""
