"""Masks personal data in request logs before they are parsed or stored in dead letters:
e-mail addresses anywhere in the record, client IP fields, and the values of sensitive query parameters.

    --udf_path udf/mask_pii.py --udf_function process
"""

import json
import re

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
SENSITIVE_QUERY = re.compile(r"([?&](?:email|token|password|ssn|phone)=)[^&#\"]*", re.IGNORECASE)
IP_FIELDS = ("remoteIp", "serverIp", "remote_addr", "client_ip", "x_forwarded_for")


def _mask_text(text):
    return SENSITIVE_QUERY.sub(r"\1REDACTED", EMAIL.sub("<email>", text))


def _mask(node):
    if isinstance(node, dict):
        return {k: "0.0.0.0" if k in IP_FIELDS and isinstance(v, str) else _mask(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask(v) for v in node]
    if isinstance(node, str):
        return _mask_text(node)
    return node


def process(record):
    """JSON text or dict in, same kind out. Non-JSON text is masked as plain text (the parser will then
    dead-letter it, without the personal data)."""
    if isinstance(record, dict):
        return _mask(record)
    try:
        obj = json.loads(record)
    except ValueError:
        return _mask_text(record)
    return json.dumps(_mask(obj))
