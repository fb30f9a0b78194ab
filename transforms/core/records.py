import json
import math

from transforms.io.deadletter import RecordError


def is_missing(value):
    """None, NaN or empty text: a value the record does not have."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""



def record_dict(record):
    """A record as read (dict, or JSON text/bytes) -> dict; RecordError("invalid_json") otherwise."""
    if isinstance(record, dict):
        return record
    try:
        row = json.loads(record)
    except ValueError as e:
        raise RecordError("invalid_json", f"not JSON: {e}") from None
    if not isinstance(row, dict):
        raise RecordError("invalid_json", f"a record must be a JSON object, got {type(row).__name__}")
    return row
