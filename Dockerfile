# voxgate: real-time voice-session proxy with inline metering.
#   docker build -t voxgate .
#   docker run -d --name voxgate -p 8080:8080 -v voxgate-data:/data voxgate
#   docker exec voxgate voxgate admin create-account you@example.com   # then create-project, create-key
# (README, "Docker"). The build context is pyproject.toml, README.md and voxgate/ (.dockerignore).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VOXGATE_HOST=0.0.0.0 \
    VOXGATE_PORT=8080 \
    VOXGATE_DATA_DIR=/data

# libgomp1: onnxruntime (piper TTS); libopus/libvpx come inside the av wheel.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY voxgate ./voxgate
RUN pip install -c constraints.txt .

RUN useradd --system --uid 10001 --home-dir /data --create-home voxgate
USER voxgate
VOLUME ["/data"]
EXPOSE 8080
# WebRTC media uses UDP on ephemeral ports: run with --network host, or set
# [webrtc] host_addresses / public_address and publish a TURN server.
HEALTHCHECK CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)" || exit 1
# Production-safe defaults: listening on 0.0.0.0 turns the demo account, its
# login and the browser demo-key route off (VOXGATE_DEMO=true forces them on).
ENTRYPOINT ["voxgate"]
CMD ["serve"]
