"""The Celery app Flower watches: ``celery -A producer.flower_app flower`` (``turnq flower``).

Built by the same ``make_celery`` as producers and workers, so the broker URL, transport
options and namespaced queue names are exactly theirs; it does not import ``workers/``
(Flower needs the broker, not the agent runtime or a model key).  turnq's three queues
are declared so that Flower's broker page and ``/api/queues/length`` still list
``<ns>turns``, ``<ns>summarize`` and ``<ns>maintenance`` when no worker is online:
otherwise Flower lists only the queues online workers report consuming.
"""

from __future__ import annotations

from kombu.entity import Queue

from shared.celery_app import make_celery
from shared.keys import MAINTENANCE_QUEUE, SUMMARIZE_QUEUE, TURNS_QUEUE, queue
from shared.settings import get_settings

_settings = get_settings()
app = make_celery(_settings, main="turnq-flower")
app.conf.task_queues = tuple(
    Queue(queue(name, _settings.namespace))  # type: ignore[no-untyped-call]
    for name in (TURNS_QUEUE, SUMMARIZE_QUEUE, MAINTENANCE_QUEUE)
)
