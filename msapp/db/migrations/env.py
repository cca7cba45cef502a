"""Alembic environment: the app's engine, batch mode for SQLite, and a version table of our own.

The version table is `ms_alembic_version` so that a platform database that already uses Alembic
(table `alembic_version`) is never confused with this service's migrations.
"""
from alembic import context
from flask import current_app

VERSION_TABLE = "ms_alembic_version"


def _metadata():
    return current_app.extensions["migrate"].db.metadata


def run_migrations_offline():
    context.configure(
        url=current_app.config["SQLALCHEMY_DATABASE_URI"],
        target_metadata=_metadata(),
        literal_binds=True,
        render_as_batch=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    engine = current_app.extensions["migrate"].db.engine
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=_metadata(),
            render_as_batch=True,
            version_table=VERSION_TABLE,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
