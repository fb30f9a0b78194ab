"""Model scoring: the model handler, request parsing and prediction rows, the Bigtable cache."""
