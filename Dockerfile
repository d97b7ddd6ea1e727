# One image for the teacher service and the student workers (CPU only).
#   docker build -t acl-teacher .        (docker compose up --build does this)

# ---- builder: a virtualenv with the project and its dependencies
FROM python:3.11-slim AS builder
# A compiler, in case a dependency has no wheel for this platform; it stays in this stage.
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# The CPU build of torch first: from PyPI, torch would pull gigabytes of CUDA packages.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
# Dependencies in their own layer (empty packages stand in for the code), so a code change
# does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir teacher_service student_client && pip install . && pip uninstall -y acl-teacher
COPY teacher_service teacher_service
COPY student_client student_client
RUN pip install --no-deps .

# ---- final: the virtualenv on a slim Python, run as an unprivileged user
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 app && mkdir /data && chown app /data
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    TEACHER_HOST=0.0.0.0 TEACHER_PORT=8000 TEACHER_DATA_DIR=/data
USER app
WORKDIR /home/app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# The service by default; the students run `student-worker ...` in the same image.
CMD ["teacher-service", "serve"]
