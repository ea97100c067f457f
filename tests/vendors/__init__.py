"""Loopback HTTP servers that speak vendors' documented APIs strictly, for tests (Twilio, Vonage)."""
