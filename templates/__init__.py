"""Dataflow Flex Template packaging: metadata generated from the options classes, the container image,
and a local launcher that takes the same parameters."""
