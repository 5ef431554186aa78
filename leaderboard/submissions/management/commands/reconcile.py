"""``manage.py reconcile``: the reconciler's loop (see ``leaderboard.submissions.reconciler``)."""

import time

from django.core.management.base import BaseCommand
from django.db import DatabaseError, close_old_connections, connection
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from leaderboard.submissions.reconciler import EVERY_S, Reconciler, logger


class Command(BaseCommand):
    help = (
        "Re-send, idempotently, the evaluation of every pending submission whose message was lost "
        "(broker, database or worker failure), every few seconds; --once for a single pass."
    )

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=EVERY_S, help="seconds between passes")
        parser.add_argument("--once", action="store_true", help="one pass, then exit")

    def handle(self, *args, every: float, once: bool, **options):
        reconciler = Reconciler()
        while True:
            close_old_connections()
            try:
                report = reconciler.reconcile()
            except DatabaseError as error:
                logger.warning(
                    "reconciler: database unavailable (%s); next pass in %g s", error, every
                )
                reconciler.note_database(False)
                connection.close()
            except (BrokerError, RedisError, SQLAlchemyError, OSError) as error:
                logger.warning(
                    "reconciler: broker unavailable (%s); next pass in %g s", error, every
                )
                reconciler.note_database(True)
            else:
                reconciler.note_database(True)
                if report:
                    logger.info("reconciler: %s", dict(report))
                    self.stdout.write(f"re-sent: {dict(report)}")
            if once:
                return
            time.sleep(every)
