"""The simulated Twilio Media Streams client the telephony tests use: it
ships with the load test (``voxgate.loadtest.twilio_client``), re-exported
here for the tests that import it from this path."""

from voxgate.loadtest.twilio_client import FRAME, SILENCE, Clear, TwilioStream

__all__ = ["FRAME", "SILENCE", "Clear", "TwilioStream"]
