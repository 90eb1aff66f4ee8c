# The panel's own image (web, worker and beat run from it; see docker-compose.yml).
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PANEL_DATA_DIR=/data DJANGO_SETTINGS_MODULE=panel.settings
# pg_restore on the panel host: Verify reads dumps with it, and a backup downloads as an Odoo zip through
# `pg_restore --file=-` (dump.sql). One client per PostgreSQL major version (PostgreSQL's apt repository), because
# the download uses the dump's own version: a newer pg_restore writes SQL that older servers refuse (17's
# `SET transaction_timeout`), and an older one cannot read a newer dump.
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-common \
    && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
    && apt-get install -y --no-install-recommends postgresql-client-13 postgresql-client-14 postgresql-client-15 \
       postgresql-client-16 postgresql-client-17 \
    && rm -rf /var/lib/apt/lists/*
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
