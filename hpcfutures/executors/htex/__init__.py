"""The HighThroughputExecutor: a pilot-job pool fed through a ZeroMQ interchange."""
