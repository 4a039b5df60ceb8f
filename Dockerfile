FROM python:3.11-slim
WORKDIR /app
# LICENSE: pyproject.toml's license-files; .dockerignore keeps caches and local databases out.
COPY pyproject.toml README.md LICENSE ./
COPY shared ./shared
COPY worker ./worker
COPY api ./api
RUN pip install --no-cache-dir .
# uid 1000 matches the tmpfs for PROMETHEUS_MULTIPROC_DIR in docker-compose.yml.
RUN useradd --create-home --uid 1000 usage && chown usage /app
USER usage
EXPOSE 8000 9100
CMD ["gunicorn", "-c", "python:api.gunicorn_conf", "--bind", "0.0.0.0:8000", "--workers", "2", "api:create_app()"]
