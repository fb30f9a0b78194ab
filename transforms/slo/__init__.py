"""SLOs over SLI rows: the evaluator (compliance, budgets, burn-rate alerts) and the status rows."""
