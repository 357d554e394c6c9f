"""Settings of the calculator service."""

PORT = 8042
MAX_RETRIES = 3
