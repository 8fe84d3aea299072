# Airflow image with this project's DAGs, plugins and library. Built FROM the official Airflow image of the
# pinned version; the library is installed editable so include/sql stays next to it.
FROM apache/airflow:3.3.2-python3.11

USER 0
# Client programs of every major we upgrade between come from the database hosts over SSH; the worker only
# needs libpq for psycopg2 and the PostgreSQL client for local (same-host) clusters.
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client=15+248+deb12u1 \
    && rm -rf /var/lib/apt/lists/*

USER 50000
WORKDIR /opt/airflow
COPY --chown=airflow:root requirements.txt constraints.txt pyproject.toml ./
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt
COPY --chown=airflow:root dags/ dags/
COPY --chown=airflow:root plugins/ plugins/
COPY --chown=airflow:root include/ include/
RUN pip install --no-cache-dir --no-deps -e .
ENV AIRFLOW__CORE__LOAD_EXAMPLES=False
