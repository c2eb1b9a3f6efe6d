# The fracture web app: gunicorn serving one trained run, mounted (or copied) at /srv/run.
#
#   docker build -t fracture-app .
#   docker run --rm -p 8000:8000 -v "$PWD/saved_models/<run>:/srv/run:ro" fracture-app
#   open http://127.0.0.1:8000/
#
# Not yet built or run by the developers (their machines had no Docker engine); see docs/app.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLCONFIGDIR=/tmp/matplotlib \
    FRACTURE_RUN=/srv/run \
    FRACTURE_MAX_UPLOAD_MB=20

WORKDIR /opt/fracture
# Dependencies first (pinned by constraints.txt, TensorFlow CPU), so code changes reuse this layer.
COPY requirements.txt constraints.txt ./
RUN pip install -r requirements.txt -c constraints.txt
COPY pyproject.toml README.md ./
COPY fracture ./fracture
RUN pip install --no-deps .

RUN useradd --create-home --uid 10001 fracture && mkdir -p /srv/run && chown fracture /srv/run
USER fracture
WORKDIR /home/fracture

EXPOSE 8000
# slim has no curl: ask /healthz with the Python standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
# One worker process holds the model once; threads share it (the app serialises model calls).
# gunicorn with request timeouts (a stalled upload cannot hold a thread): fracture/serving.py
CMD ["python", "-m", "fracture", "serve", "--host", "0.0.0.0", "--port", "8000"]
