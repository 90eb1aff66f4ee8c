# The panel's own image (web, worker and beat run from it; see docker-compose.yml).
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PANEL_DATA_DIR=/data DJANGO_SETTINGS_MODULE=panel.settings
RUN useradd --system --create-home --home-dir /home/panel panel && mkdir /data && chown panel /data
WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN PANEL_SECRET_KEY=build PANEL_ENCRYPTION_KEYS=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY= \
    python manage.py collectstatic --noinput -v 0
USER panel
EXPOSE 8000
CMD ["python", "-m", "uvicorn", "panel.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
