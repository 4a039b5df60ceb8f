FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY worker ./worker
COPY api ./api
RUN pip install --no-cache-dir .
RUN useradd --create-home usage && chown usage /app
USER usage
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--access-logfile", "-", "api:create_app()"]
