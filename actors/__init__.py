"""sdpipe's Dramatiq layer: the broker, the step actors, the embedded runtime and the worker entry.

The only package that imports Dramatiq. The broker is always built (``build_broker``) before the
actors are declared on it (``declare_actors``), so no actor binds to an accidental default broker.
Each name is imported from its module when first used (:func:`pipeline._lazy.lazy_exports`): a
command that only enqueues loads neither the worker processes' code nor the supervisor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from actors.broker import BROKER_NAMESPACE, MAINTENANCE_CHANCE, build_broker
    from actors.queues import QueueDepth, queue_depths
    from actors.runtime import Runtime, open_runtime
    from actors.steps import IMAGES_QUEUE, JOB_FAILED_ACTOR, QUEUES, SD_QUEUE, StepActors, declare_actors
    from actors.supervisor import CRASH_LOOP_DEATHS, CRASH_LOOP_WINDOW_S, RET_CRASH_LOOP
    from actors.webhooks import WEBHOOK_ACTOR, WEBHOOKS_QUEUE, declare_webhook_actor, start_webhook_worker
    from actors.worker import check_metrics_port, run_workers, setup

__all__ = [
    # Broker
    "BROKER_NAMESPACE",
    "MAINTENANCE_CHANCE",
    "build_broker",
    # Actors
    "IMAGES_QUEUE",
    "JOB_FAILED_ACTOR",
    "QUEUES",
    "SD_QUEUE",
    "StepActors",
    "declare_actors",
    "WEBHOOKS_QUEUE",
    "WEBHOOK_ACTOR",
    "declare_webhook_actor",
    "start_webhook_worker",
    # Queues
    "QueueDepth",
    "queue_depths",
    # Runtime
    "Runtime",
    "open_runtime",
    # Worker processes
    "CRASH_LOOP_DEATHS",
    "CRASH_LOOP_WINDOW_S",
    "RET_CRASH_LOOP",
    "check_metrics_port",
    "run_workers",
    "setup",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".broker": ["BROKER_NAMESPACE", "MAINTENANCE_CHANCE", "build_broker"],
        ".queues": ["QueueDepth", "queue_depths"],
        ".runtime": ["Runtime", "open_runtime"],
        ".steps": ["IMAGES_QUEUE", "JOB_FAILED_ACTOR", "QUEUES", "SD_QUEUE", "StepActors", "declare_actors"],
        ".supervisor": ["CRASH_LOOP_DEATHS", "CRASH_LOOP_WINDOW_S", "RET_CRASH_LOOP"],
        ".webhooks": ["WEBHOOK_ACTOR", "WEBHOOKS_QUEUE", "declare_webhook_actor", "start_webhook_worker"],
        ".worker": ["check_metrics_port", "run_workers", "setup"],
    },
)
