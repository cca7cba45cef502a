"""Bring a database to the current schema (Alembic via Flask-Migrate) and check it is reachable."""
from __future__ import annotations

from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import text

from msapp.extensions import db
from msapp.state import ms


def upgrade_database(app: Flask) -> None:
    """Apply migrations, then rebuild the webhook index from stored configs."""
    with app.app_context():
        upgrade(directory=app.extensions["migrate"].directory)
        ms().configs.reindex_webhooks()


def ping(app: Flask) -> None:
    """Raise if the database cannot be reached."""
    with app.app_context():
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
