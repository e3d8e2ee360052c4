"""The node's state database: series, instances, jobs, results and deliveries."""
