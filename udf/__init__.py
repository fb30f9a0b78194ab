"""Sample user-defined functions (`--udf_path udf/<file> --udf_function process`); see transforms/io/udf.py."""
