"""SLIs from request logs: the SLI config, log parsing, window statistics, SLI rows, TensorBoard."""
