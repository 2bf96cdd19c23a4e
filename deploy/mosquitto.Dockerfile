# Debian's mosquitto, as in the tests (scripts/system-packages test).
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends mosquitto && rm -rf /var/lib/apt/lists/*
USER mosquitto
CMD ["mosquitto", "-c", "/etc/mosquitto/roadfeed.conf"]
