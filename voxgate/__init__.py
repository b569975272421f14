"""voxgate: a real-time voice-session proxy with inline metering for OpenAI
Realtime clients (WebSocket and WebRTC)."""

__version__ = "0.1.0"
