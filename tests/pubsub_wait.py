"""Pulling a Pub/Sub emulator subscription until the expected messages are there (one pull may return
only part of what is available, and a streaming job publishes some outputs a little after others)."""

import json
import time


def wait_for_messages(subscriber, subscription, count, timeout=120):
    """Pulls (and acknowledges) until `count` JSON messages have arrived or the time is up."""
    messages, deadline = [], time.time() + timeout
    while len(messages) < count and time.time() < deadline:
        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=5)
        messages += [json.loads(m.message.data) for m in response.received_messages]
        if response.received_messages:
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
    return messages
